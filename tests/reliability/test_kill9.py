"""kill -9 the server at random while clients add domains: every acknowledged add survives.

The line API answers `ok` only after the batch holding the request committed (SQLite WAL with
synchronous=FULL, or PostgreSQL), so a SIGKILL at any moment may lose unanswered requests but
never an answered one. Each client keeps a ledger of the names it was told `ok` for; after a
minute of kills and restarts every ledger name must be in the database.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.reliability.support import LIMITS_OFF, LedgerClient, request_key, watched_hosts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SECONDS = float(os.environ.get("KEYCHEST_KILL9_SECONDS", "60"))


def test_no_acknowledged_add_is_lost_across_kill9(server_factory, db_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Role all: the scanner and mailer write too, as in production; the names never resolve.
    server = server_factory(*LIMITS_OFF, "--scan-interval", "1h", db_url=db_url)
    key = request_key(server.line_port)
    clients = [LedgerClient(server.line_port, key, f"c{i}").start() for i in range(4)]
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    kills = 0
    deadline = time.monotonic() + SECONDS
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 4.0))
            server.kill9()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.5))
            server.start()
    finally:
        for client in clients:
            client.stop()
        server.stop()
    acknowledged = [name for client in clients for name in client.acknowledged]
    refused = [answer for client in clients for answer in client.refused]
    stored = watched_hosts(db_url)
    lost = [name for name in acknowledged if name not in stored]
    print(f"{kills} kills, {len(acknowledged)} acknowledged, {len(stored)} stored, {len(refused)} refused")
    assert kills >= max(2, int(SECONDS / 10))
    assert len(acknowledged) > 1000, "too little traffic to mean anything"
    assert not lost, f"{len(lost)} acknowledged adds lost, e.g. {lost[:5]}"
    # Refusals are allowed only as "storage unavailable; retry" during a restart, never silent.
    retry_later = (b"status error 503", b"status error 500")
    assert all(answer.startswith(retry_later) for answer in refused), refused[:5]
