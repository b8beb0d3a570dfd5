"""Every role observable (issue 16 item 2): a scanner and a mailer with --http-listen answer
/healthz and /metrics; every process's heartbeat shows on the API's /metrics; PostgreSQL's
pg_stat_activity names each process's role and host."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from keychest.store.db import normalise_url
from tests.reliability.support import RoleProcess, request_key
from tests.support.net import free_port
from tests.support.server import LiveServer


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str, name: str) -> list:  # type: ignore[type-arg]
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_scanner_and_mailer_serve_health_and_heartbeats(
    db_url: str, server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    api = server_factory("--role", "api", db_url=db_url)
    scanner_port, mailer_port = free_port(), free_port()
    scanner = RoleProcess(db_url, tmp_path / "s", "scanner", ("--http-listen", f"127.0.0.1:{scanner_port}"))
    mailer = RoleProcess(db_url, tmp_path / "m", "mailer", ("--http-listen", f"127.0.0.1:{mailer_port}"))
    quiet = RoleProcess(db_url, tmp_path / "q", "scanner")  # no --http-listen: no listener
    try:
        for process in (scanner, mailer, quiet):
            process.start()
        # A claim queues a confirmation mail; the mailer has no --smtp, so it stays queued.
        key = request_key(api.line_port)
        with socket.create_connection(("127.0.0.1", api.line_port), timeout=10) as sock:
            sock.sendall(f"command claim apikey {key} email owner@example.org\n".encode())
            assert b"status ok" in sock.recv(4096)
        for process, port in ((scanner, scanner_port), (mailer, mailer_port)):
            wait_for(lambda port=port: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, "healthz")
            status, text = get(f"http://127.0.0.1:{port}/healthz")
            assert text.startswith("ok: last pass"), text
            status, text = get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            loops = {s.labels["loop"] for s in samples(text, "keychest_process_loop_age_seconds")}
            assert loops == {process.role}
            # Each process's own counters are on its own /metrics, e.g. the scan histogram.
            if process is scanner:
                assert samples(text, "keychest_scan_duration_seconds_count")
            else:  # the mailer: what waits in the outbox
                depth = {s.labels["state"]: s.value for s in samples(text, "keychest_outbox_rows")}
                assert depth == {"queued": 1, "sending": 0, "failed": 0}
                assert samples(text, "keychest_outbox_oldest_queued_seconds")[0].value > 0
                sends = {
                    (s.labels["channel"], s.labels["state"]): s.value
                    for s in samples(text, "keychest_outbox_messages")
                }
                assert sends == {("mail", "queued"): 1}
        assert f"{scanner_port}" in scanner.log() and "/healthz and /metrics" in scanner.log()
        assert "/healthz" not in quiet.log()

        def heartbeats() -> dict[tuple[str, str], float]:
            text = get(f"{api.http_url}/metrics")[1]
            return {
                (s.labels["role"], s.labels["pid"]): s.value
                for s in samples(text, "keychest_heartbeat_age_seconds")
            }

        pids = {
            ("scanner", str(scanner.proc.pid)),
            ("mailer", str(mailer.proc.pid)),
            ("scanner", str(quiet.proc.pid)),
        }  # type: ignore[union-attr]
        assert api.proc is not None
        wait_for(
            lambda: pids | {("api", str(api.proc.pid))} <= set(heartbeats()),
            "heartbeats on the API's /metrics",
        )
        assert all(age < 30 for age in heartbeats().values())
        host = socket.gethostname()
        text = get(f"{api.http_url}/metrics")[1]
        assert {s.labels["host"] for s in samples(text, "keychest_heartbeat_age_seconds")} == {host}

        if db_url.startswith("postgres"):
            engine = sa.create_engine(normalise_url(os.environ["KEYCHEST_TEST_DATABASE_URL"]))
            with engine.connect() as conn:
                names = set(conn.execute(sa.text("SELECT application_name FROM pg_stat_activity")).scalars())
            engine.dispose()
            assert {
                f"keychest scanner {host}"[:63],
                f"keychest mailer {host}"[:63],
                f"keychest api {host}"[:63],
            } <= names
    finally:
        for process in (scanner, mailer, quiet):
            process.stop()
