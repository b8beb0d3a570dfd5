"""A slow resolver must not fail healthy endpoints (issue 16 item 7).

The system resolver's nameserver here is a UDP socket that reads queries and never answers.
Sixty lookups of names only it could answer are in flight; `localhost` (in the hosts file)
must still resolve at once, the sixty time out each on its own clock, and the storm is one
WARNING line, not silence.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest

from keychest.scan.errors import ScanFailure
from keychest.scan.resolve import Resolver


def black_hole() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock  # nobody reads it: every query is lost


def test_lookup_storm_leaves_hosts_file_names_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hole = black_hole()
    port = hole.getsockname()[1]
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver 127.0.0.1\noptions attempts:1\n# port {port}\n")
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost\n192.0.2.7 intranet.example  # a comment\n"
    )

    async def run() -> tuple[list[object], list[float], list[str]]:
        resolver = Resolver(2.0, resolv_conf=str(resolv), hosts_file=str(hosts))
        assert resolver._dns is not None
        resolver._dns.port = port  # resolv.conf has no port syntax; the black hole is not on 53

        async def timed(name: str) -> float:
            started = time.monotonic()
            await resolver.resolve(name)
            return time.monotonic() - started

        storm = [asyncio.create_task(resolver.resolve(f"n{i}.slow.example")) for i in range(60)]
        await asyncio.sleep(0.2)  # the storm's queries are out
        quick = [await timed("localhost") for _ in range(20)]
        local = await resolver.resolve("intranet.example")
        outcomes = await asyncio.gather(*storm, return_exceptions=True)
        return outcomes, quick, local

    with caplog.at_level(logging.WARNING, logger="keychest.scan.resolve"):
        started = time.monotonic()
        outcomes, quick, local = asyncio.run(run())
        elapsed = time.monotonic() - started
    hole.close()
    assert max(quick) < 0.05, quick
    assert local == ["192.0.2.7"]
    assert all(isinstance(o, ScanFailure) and "timed out" in str(o) for o in outcomes), outcomes[:3]
    assert elapsed < 10, elapsed  # each lookup on its own 2 s clock, not queued behind the others
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "DNS lookups timed out in the last minute" in warnings[0], warnings
