"""Issue 10 item 5: a tarpit on one address cannot hold up the scans of other addresses.

A tarpit is 100 endpoints on 127.0.0.2 that accept the TCP connection and never answer
(each probe costs a whole time-out); a real TLS server (trustme) listens on 127.0.0.3.
With endpoints waiting for a per-address slot holding global slots (the old behaviour),
the good endpoint waited for the tarpit to be worked through, time-out after time-out.

The assertions are on order, not on durations: the good handshake must happen before the
first tarpit probe gives up (a time-out of 20 s leaves a noisy machine plenty of room), and
the waits are for positive events, bounded generously only so the old code fails instead
of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keychest.config import SchedulerSettings, Settings
from keychest.scan.runner import Scanner, ScanOptions
from keychest.scan.targets import Endpoint
from keychest.servers.scheduler import ScanScheduler
from keychest.service import domains, keys
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade

from .certs import CertFactory
from .tls_servers import TestServers

pytestmark = pytest.mark.timeout(120)

TARPIT_IP = "127.0.0.2"
GOOD_IP = "127.0.0.3"
# One scan time-out: what the tarpit may cost others, at most. Long, so that a loaded
# machine does not reach it before the good handshake; the new code never waits for it.
TIMEOUT = 20.0
TARPIT_SIZE = 100


def start_tarpit(servers: TestServers) -> list[int]:
    return [servers.hostile("silent", hosts=[TARPIT_IP]) for _ in range(TARPIT_SIZE)]


def start_good(servers: TestServers, certs: CertFactory) -> int:
    cert = certs.valid(GOOD_IP)
    return servers.tls(cert.chain_pem, cert.key_pem, hosts=[GOOD_IP])


def tarpit_given_up(servers: TestServers, ports: list[int]) -> int:
    """Tarpit connections the scanner has already dropped (its probe timed out)."""
    return sum(servers.connections[p]["total"] - servers.connections[p]["now"] for p in ports)


def handshakes(servers: TestServers, port: int) -> int:
    return servers.connections[port]["total"]


def options(certs: CertFactory, **extra: int) -> ScanOptions:
    return ScanOptions(
        timeout=TIMEOUT,
        allow_private_targets=True,
        ca_file=str(certs.ca_file),
        system_trust=False,
        per_address_concurrency=4,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def servers() -> Iterator[TestServers]:
    # Its own servers: connection counts are kept per port, and a port of another test's
    # server on another address must not count here.
    with TestServers() as started:
        yield started


def test_tarpit_does_not_hold_up_a_scan_list(servers: TestServers, certs: CertFactory) -> None:
    tarpit = start_tarpit(servers)
    good = start_good(servers, certs)
    targets = [*(Endpoint(TARPIT_IP, port) for port in tarpit), Endpoint(GOOD_IP, good)]

    async def scan_until_good_answered() -> tuple[int, int]:
        scanner = Scanner(options(certs, concurrency=20))
        task = asyncio.create_task(scanner.scan_grouped(targets))
        deadline = time.monotonic() + 1.5 * TIMEOUT
        try:
            while handshakes(servers, good) == 0:
                assert not task.done(), task
                assert time.monotonic() < deadline, "the good endpoint was not scanned in 1.5 time-outs"
                await asyncio.sleep(0.02)
            return tarpit_given_up(servers, tarpit), scanner.parked
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    given_up, parked = asyncio.run(scan_until_good_answered())
    # The tarpit was really in the way (its endpoints queued for their address) ...
    assert parked > 0
    # ... and still the good endpoint was scanned before the tarpit cost its first time-out.
    assert given_up == 0


def test_tarpit_does_not_hold_up_the_scheduler(
    servers: TestServers, certs: CertFactory, tmp_path: Path
) -> None:
    tarpit = start_tarpit(servers)
    good = start_good(servers, certs)
    db_url = f"sqlite:///{tmp_path / 'keychest.db'}"
    db = Database(db_url)
    upgrade(db)
    service = Keychest(db, Settings(db_url, tmp_path, "keychest.test"))
    # The tarpit's names first, so they are due (and leased) before the good one.
    for start in range(0, TARPIT_SIZE, 50):
        key = service.call(keys.create).key
        for port in tarpit[start : start + 50]:
            service.call(domains.add, key, f"{TARPIT_IP}:{port}")
    service.call(domains.add, service.call(keys.create).key, f"{GOOD_IP}:{good}")

    scheduler = ScanScheduler(
        service,
        SchedulerSettings(interval_s=3600, max_in_flight=10, idle_poll_s=0.2),
        options(certs),
    )
    recorded: list[tuple[str, int, str]] = []
    scheduler.on_recorded.append(
        lambda item, results: recorded.append((item.host, item.port, str(results[0].state)))
    )

    async def run_until_good_recorded() -> int:
        task = asyncio.create_task(scheduler.run())
        deadline = time.monotonic() + 1.5 * TIMEOUT
        try:
            while not any(host == GOOD_IP for host, _, _ in recorded):
                assert not task.done(), task
                assert time.monotonic() < deadline, "the good endpoint was not scanned in 1.5 time-outs"
                await asyncio.sleep(0.02)
            return tarpit_given_up(servers, tarpit)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        given_up = asyncio.run(run_until_good_recorded())
    finally:
        db.dispose()
    assert recorded[0] == (GOOD_IP, good, "ok")
    assert given_up == 0
    assert sum(servers.connections[p]["total"] for p in tarpit) > 0  # the tarpit was in the way
