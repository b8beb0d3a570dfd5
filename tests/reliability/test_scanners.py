"""Several scanner processes on one PostgreSQL: each endpoint scanned once; a dead one's work is taken over.

Every endpoint is a port on 127.0.0.1 that waits a second before relaying to one real TLS
server (trustme certificate), so that scans take long enough for a scanner to die in the
middle of them. Connections are counted per port on the test servers: a connection is a scan
attempt. A scan may make more than one connection (the old_protocol check's TLS 1.0/1.1
handshake, which the TLS 1.2+ server refuses with a few bytes of alert), so what says "scanned
twice" is the count of connections through which the server sent its certificate.
Scanner A is killed with SIGKILL while it holds leases; scanner B, running alongside from the
start, must take A's unfinished endpoints over once their (short) lease runs out,
and no endpoint A did not hold may be scanned twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from keychest.store.db import normalise_url
from tests.conftest import PG_URL
from tests.reliability.support import LIMITS_OFF, RoleProcess, request_key
from tests.scan.certs import CertFactory
from tests.scan.tls_servers import TestServers
from tests.support.pg import fresh_schema

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not PG_URL, reason="needs KEYCHEST_TEST_DATABASE_URL"),
]

ENDPOINTS = 24
DELAY_S = 1.0
LEASE = "4s"


# More than an alert, less than a ServerHello with the certificate.
SERVED_BYTES = 500


def slow_relay(backend_port: int, served: Counter[int]):  # type: ignore[no-untyped-def]
    """A connection handler: wait, then pipe bytes both ways to the TLS server, counting in
    `served` (by listening port) the connections that got the server's certificate."""

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count_for: int | None = None
    ) -> None:
        sent = 0
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                if count_for is not None and sent < SERVED_BYTES <= sent + len(data):
                    served[count_for] += 1
                sent += len(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(DELAY_S)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend_port)
        except OSError:
            writer.close()
            return
        port = writer.get_extra_info("sockname")[1]
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer, port))

    return handle


def test_two_scanners_one_killed(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = CertFactory(tmp_path)
    with (
        fresh_schema(PG_URL or "", f"kc_{uuid.uuid4().hex[:12]}") as url,
        TestServers() as servers,
    ):
        backend = servers.tls_trustme(certs.ca.issue_cert("localhost"), hosts=["127.0.0.1"])
        # TestServers counts connections per port for any handler; _listen is its one way in.
        served: Counter[int] = Counter()
        ports = [servers._listen(slow_relay(backend, served), ["127.0.0.1"], None) for _ in range(ENDPOINTS)]
        scanner_flags = (
            "--allow-private-targets", "--ca-file", str(certs.ca_file), "--scan-interval", "1h",
            "--scan-concurrency", "4", "--scan-lease", LEASE, "--scan-timeout", "5",
        )  # fmt: skip
        # Both scanners start together on an empty schema: they race to migrate it, too.
        a = RoleProcess(url, tmp_path / "a", "scanner", scanner_flags)
        b = RoleProcess(url, tmp_path / "b", "scanner", scanner_flags)
        started = [a, b]
        try:
            threads = [threading.Thread(target=s.start) for s in started]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            api = server_factory("--role", "api", *LIMITS_OFF, db_url=url)
            key = request_key(api.line_port)
            engine = sa.create_engine(normalise_url(url))
            with socket.create_connection(("127.0.0.1", api.line_port)) as sock:
                lines = b"".join(
                    f"command add apikey {key} domain localhost:{port}\n".encode() for port in ports
                )
                sock.sendall(lines)
                answer = b""
                while answer.count(b"status ") < ENDPOINTS:
                    answer += sock.recv(65536)
            assert answer.count(b"status ok") == ENDPOINTS, answer
            assert a.proc is not None
            marker = f":{a.proc.pid}:"

            def held_by_a() -> list[int]:
                with engine.connect() as conn:
                    return list(
                        conn.execute(
                            sa.text("SELECT port FROM endpoints WHERE lease_owner LIKE :m"),
                            {"m": f"%{marker}%"},
                        ).scalars()
                    )

            deadline = time.monotonic() + 30
            while not (held := held_by_a()):
                assert time.monotonic() < deadline, "scanner A never leased anything:\n" + a.log()
                time.sleep(0.05)
            time.sleep(DELAY_S / 2)  # A's probes are connected and waiting on the relay now
            a.kill9()
            held = held_by_a()
            assert held, "A finished its leases before it could be killed"

            deadline = time.monotonic() + 60
            while True:
                with engine.connect() as conn:
                    unscanned = conn.execute(
                        sa.text("SELECT count(*) FROM endpoints WHERE last_scan_at IS NULL")
                    ).scalar_one()
                if unscanned == 0:
                    break
                assert time.monotonic() < deadline, f"{unscanned} never scanned:\n{b.log()}"
                time.sleep(0.2)
            time.sleep(DELAY_S * 2)  # anything scanned twice would have connected by now
            with engine.connect() as conn:
                states = dict(
                    conn.execute(
                        sa.text(
                            "SELECT e.port, s.state FROM endpoints e"
                            " JOIN address_states s ON s.endpoint_id = e.id"
                        )
                    ).all()
                )
            engine.dispose()
        finally:
            for scanner in started:
                scanner.stop()
        counts = {port: servers.connections[port]["total"] for port in ports}
        scans = {port: served[port] for port in ports}
    print(f"A held {sorted(held)} when killed; connections per port: {counts}; certificates served: {scans}")
    assert states == {port: "ok" for port in ports}, states
    for port in ports:
        if port in held:
            # A connected (it was killed mid-scan) and B scanned it again after the lease ran out.
            assert 1 <= scans[port] <= 2, (port, scans[port])
        else:
            assert scans[port] == 1, f"port {port} scanned {scans[port]} times"
    # What one scan costs in connections, from the endpoints scanned once by a live scanner:
    # beyond that, the held ones saw A's connections before B took them over.
    per_scan = max(counts[p] for p in ports if p not in held)
    assert sum(counts[p] for p in held) > per_scan * sum(scans[p] for p in held), (
        "no endpoint was taken over from the dead scanner"
    )
