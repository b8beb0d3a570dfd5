"""Due times and leases from the database's clock (issue 16 item 4).

Two scanners share one PostgreSQL; scanner B runs with its clock 10 minutes fast
(libfaketime), the scan interval is 5 minutes. With each process's own clock, B finds every
endpoint A scanned already due again (A's next_scan_at is 5 minutes ahead of the database,
B's clock 10) and scans it a second time within the interval. With the database's clock,
each endpoint is scanned once.

The positive event before asserting "not scanned twice": B leasing a marker endpoint added
after everything else was scanned, seen in the marker's lease_owner. B's lease query orders
by next_scan_at and takes all that is due, so any old endpoint B took for due came in that
same pass or an earlier one, and it connects at once while the marker's relay waits a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from keychest.store.db import normalise_url
from tests.conftest import PG_URL
from tests.reliability.support import LIMITS_OFF, RoleProcess, request_key
from tests.scan.certs import CertFactory
from tests.scan.tls_servers import TestServers
from tests.support.pg import fresh_schema

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not PG_URL, reason="needs KEYCHEST_TEST_DATABASE_URL"),
    pytest.mark.skipif(not FAKETIME_LIB.exists(), reason="needs Debian's libfaketime (apt install faketime)"),
]

ENDPOINTS = 16
SKEW = "+600"  # seconds: B's clock is 10 minutes fast
INTERVAL = "5m"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


def slow_relay(backend_port: int) -> Handler:
    """Wait a second, then pipe to the TLS server: the marker's lease is held long enough to see."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.0)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return handle


def add(port: int, key: str, endpoint_ports: list[int]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"".join(f"command add apikey {key} domain localhost:{p}\n".encode() for p in endpoint_ports)
        )
        answer = b""
        while answer.count(b"status ") < len(endpoint_ports):
            answer += sock.recv(65536)
    assert answer.count(b"status ok") == len(endpoint_ports), answer


def test_skewed_scanner_neither_steals_nor_rescans(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = CertFactory(tmp_path)
    with (
        fresh_schema(PG_URL or "", f"kc_{uuid.uuid4().hex[:12]}") as url,
        TestServers() as servers,
    ):
        leaf = certs.ca.issue_cert("localhost")
        ports = [servers.tls_trustme(leaf, hosts=["127.0.0.1"]) for _ in range(ENDPOINTS)]
        backend = servers.tls_trustme(leaf, hosts=["127.0.0.1"])
        flags = (
            "--allow-private-targets", "--ca-file", str(certs.ca_file), "--scan-interval", INTERVAL,
            "--scan-concurrency", "64", "--scan-timeout", "5",
        )  # fmt: skip
        api = server_factory("--role", "api", *LIMITS_OFF, db_url=url)
        a = RoleProcess(url, tmp_path / "a", "scanner", flags)
        b = RoleProcess(
            url,
            tmp_path / "b",
            "scanner",
            flags,
            env={"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": SKEW, "FAKETIME_DONT_FAKE_MONOTONIC": "1"},
        )
        engine = sa.create_engine(normalise_url(url))
        try:
            a.start()
            b.start()
            assert b.proc is not None
            key = request_key(api.line_port)
            add(api.line_port, key, ports)

            def scalar(sql: str, **params: object) -> Any:
                with engine.connect() as conn:
                    return conn.execute(sa.text(sql), params).scalar()

            deadline = time.monotonic() + 60
            while scalar("SELECT count(*) FROM endpoints WHERE last_scan_at IS NULL"):
                assert time.monotonic() < deadline, "not every endpoint was scanned:\n" + a.log() + b.log()
                time.sleep(0.1)
            # Scans are recorded in the database's time, whoever ran them.
            drift = scalar(
                "SELECT max(abs(extract(epoch FROM last_scan_at - timezone('UTC', now())))) FROM endpoints"
            )
            assert drift < 60, drift

            # Markers, one at a time, until B is seen holding one: B has run a lease pass since.
            marker_b = None
            for _ in range(20):
                marker = servers._listen(slow_relay(backend), ["127.0.0.1"], None)
                add(api.line_port, key, [marker])
                deadline = time.monotonic() + 30
                owner = None
                while owner is None:
                    owner = scalar("SELECT lease_owner FROM endpoints WHERE port = :p", p=marker)
                    assert time.monotonic() < deadline, "marker never leased"
                    time.sleep(0.02)
                if f":{b.proc.pid}:" in owner:
                    marker_b = marker
                    break
            assert marker_b is not None, "B never leased a marker"
            deadline = time.monotonic() + 30
            while scalar("SELECT last_scan_at FROM endpoints WHERE port = :p", p=marker_b) is None:
                assert time.monotonic() < deadline, "B's marker never recorded:\n" + b.log()
                time.sleep(0.05)
            counts = {port: servers.connections[port]["total"] for port in ports}
        finally:
            engine.dispose()
            a.stop()
            b.stop()
    assert counts == {port: 1 for port in ports}, f"scanned more than once within the interval: {counts}"
