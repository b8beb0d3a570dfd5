"""The scanner against real TLS servers on 127.0.0.1 and ::1, with names from a real DNS server."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from keychest.scan import AddressResult, Endpoint, ErrorKind, Scanner, ScanOptions, State

from .certs import CertFactory, ServerCert
from .tls_servers import DNSServer, TestServers, free_port

# A hostile server may hold a probe for its time-out, plus this much for scheduling.
SLACK = 1.5


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer({}) as server:
        yield server


def run_scan(endpoints: list[Endpoint], **options: object) -> list[AddressResult]:
    return asyncio.run(Scanner(ScanOptions(**options)).scan(endpoints))  # type: ignore[arg-type]


def both_addresses(servers: TestServers) -> list[str]:
    return list(servers.hosts)


CASES: list[tuple[str, Callable[[CertFactory, str], ServerCert], State, set[str]]] = [
    ("valid", lambda c, n: c.valid(n), State.OK, set()),
    ("expiring", lambda c, n: c.valid(n, days=5), State.WARNING, {"expires_soon"}),
    ("expired", lambda c, n: c.expired(n), State.CRITICAL, {"expired"}),
    ("wrong-name", lambda c, n: c.valid("other.test"), State.CRITICAL, {"hostname_mismatch"}),
    ("self-signed", lambda c, n: c.self_signed(n), State.CRITICAL, {"self_signed"}),
    ("no-intermediate", lambda c, n: c.missing_intermediate(n), State.CRITICAL, {"untrusted"}),
    ("sha1", lambda c, n: c.sha1_signed(n), State.CRITICAL, {"weak_signature"}),
    ("rsa1024", lambda c, n: c.rsa1024(n), State.CRITICAL, {"weak_key"}),
    ("intermediate", lambda c, n: c.with_intermediate(n), State.OK, set()),
]


@pytest.mark.parametrize(("case", "make", "state", "codes"), CASES, ids=[c[0] for c in CASES])
def test_certificate_cases_on_every_address(
    servers: TestServers,
    certs: CertFactory,
    dns_server: DNSServer,
    case: str,
    make: Callable[[CertFactory, str], ServerCert],
    state: State,
    codes: set[str],
) -> None:
    name = f"{case}.scan.test"
    served = make(certs, name)
    port = servers.tls(served.chain_pem, served.key_pem)
    dns_server.records[name] = both_addresses(servers)

    results = run_scan(
        [Endpoint(name, port)],
        ca_file=str(certs.ca_file),
        allow_private_targets=True,
        resolver=dns_server.address,
        warn_days=30,
        crit_days=3,
        timeout=5,
    )

    assert [r.ip for r in results] == both_addresses(servers)
    for result in results:
        assert result.error is None, result.error
        assert result.endpoint == Endpoint(name, port)
        assert result.state is state
        assert result.verdict is not None and {p.code for p in result.verdict.problems} == codes
        assert result.leaf is not None and result.leaf.der == served.leaf.public_bytes(Encoding.DER)
        assert result.tls_version and result.tls_version.startswith("TLSv1")


def test_stale_deployment_two_addresses_two_certificates(
    servers: TestServers, certs: CertFactory, dns_server: DNSServer
) -> None:
    if len(servers.hosts) < 2:
        pytest.skip("needs IPv6 on ::1")
    name = "stale.scan.test"
    now = certs.now()
    old = certs.issued(name, not_before=now - dt.timedelta(days=30), not_after=now + dt.timedelta(days=60))
    new = certs.issued(name, not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=89))
    port = servers.tls(new.chain_pem, new.key_pem, hosts=["127.0.0.1"])
    servers.tls(old.chain_pem, old.key_pem, hosts=["::1"], port=port)
    dns_server.records[name] = ["127.0.0.1", "::1"]

    results = run_scan(
        [Endpoint(name, port)],
        ca_file=str(certs.ca_file),
        allow_private_targets=True,
        resolver=dns_server.address,
        timeout=5,
    )

    by_ip = {r.ip: r for r in results}
    assert set(by_ip) == {"127.0.0.1", "::1"}
    v4, v6 = by_ip["127.0.0.1"], by_ip["::1"]
    assert v4.leaf is not None and v6.leaf is not None
    assert v4.leaf.sha256 != v6.leaf.sha256
    assert v4.state is State.OK
    assert v6.verdict is not None and [p.code for p in v6.verdict.problems] == ["stale_deployment"]
    assert v6.state is State.WARNING


def test_guard_refuses_loopback_after_resolution(
    servers: TestServers, certs: CertFactory, dns_server: DNSServer
) -> None:
    served = certs.valid("inside.scan.test")
    port = servers.tls(served.chain_pem, served.key_pem)
    dns_server.records["inside.scan.test"] = both_addresses(servers)
    before = servers.connections[port]["total"]

    results = run_scan([Endpoint("inside.scan.test", port)], resolver=dns_server.address, timeout=5)

    assert [r.ip for r in results] == both_addresses(servers)
    assert all(r.error is not None and r.error.kind is ErrorKind.BLOCKED for r in results)
    assert all(r.state is State.ERROR for r in results)
    # Refused before connecting: the server never saw us.
    assert servers.connections[port]["total"] == before


def test_system_resolver_reads_etc_hosts(servers: TestServers, certs: CertFactory) -> None:
    served = certs.valid("localhost")
    port = servers.tls(served.chain_pem, served.key_pem)
    results = run_scan([Endpoint("localhost", port)], ca_file=str(certs.ca_file), allow_private_targets=True)
    assert results and "127.0.0.1" in [r.ip for r in results]
    assert all(r.state is State.OK for r in results if r.ip in servers.hosts)


def test_address_literal_targets(servers: TestServers, certs: CertFactory) -> None:
    served = certs.valid(*servers.hosts)
    port = servers.tls(served.chain_pem, served.key_pem)
    results = run_scan(
        [Endpoint(ip, port) for ip in servers.hosts], ca_file=str(certs.ca_file), allow_private_targets=True
    )
    assert [(r.ip, r.state) for r in results] == [(ip, State.OK) for ip in servers.hosts]


def test_dns_failures_are_classified(dns_server: DNSServer) -> None:
    dns_server.records["empty.scan.test"] = []
    results = run_scan(
        [Endpoint("missing.scan.test"), Endpoint("empty.scan.test")], resolver=dns_server.address, timeout=5
    )
    assert [(r.ip, r.error.kind if r.error else None) for r in results] == [
        (None, ErrorKind.DNS),
        (None, ErrorKind.NO_ADDRESS),
    ]
    assert "NXDOMAIN" in str(results[0].error)


def test_dns_time_out() -> None:
    # A UDP socket that never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
        mute.bind(("127.0.0.1", 0))
        started = time.monotonic()
        results = run_scan(
            [Endpoint("slow.scan.test")], resolver=f"127.0.0.1:{mute.getsockname()[1]}", timeout=1
        )
        assert time.monotonic() - started < 1 + SLACK
    assert results[0].error is not None and results[0].error.kind is ErrorKind.DNS
    assert "timed out" in str(results[0].error)


def test_refused(servers: TestServers) -> None:
    port = free_port(["127.0.0.1"])
    results = run_scan([Endpoint("127.0.0.1", port)], allow_private_targets=True, timeout=5)
    assert results[0].error is not None and results[0].error.kind is ErrorKind.REFUSED


HOSTILE = [
    ("silent", {ErrorKind.TIMEOUT}),
    ("trickle", {ErrorKind.TIMEOUT}),
    ("garbage", {ErrorKind.GARBAGE}),
    ("close", {ErrorKind.HANDSHAKE}),
    ("close_mid", {ErrorKind.HANDSHAKE}),
    ("flood", {ErrorKind.HANDSHAKE, ErrorKind.TOO_LARGE, ErrorKind.GARBAGE}),
]


@pytest.mark.parametrize(("behaviour", "kinds"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_servers_cost_at_most_the_time_out(
    servers: TestServers, behaviour: str, kinds: set[ErrorKind]
) -> None:
    port = servers.hostile(behaviour)
    timeout = 1.0
    started = time.monotonic()
    results = run_scan(
        [Endpoint(ip, port) for ip in servers.hosts], allow_private_targets=True, timeout=timeout
    )
    assert time.monotonic() - started < timeout + SLACK
    for result in results:
        assert result.error is not None and result.error.kind in kinds, result.error
        assert result.state is State.ERROR


def test_one_megabyte_chain_is_cut_off(servers: TestServers, certs: CertFactory) -> None:
    served = certs.huge_chain("localhost", total_bytes=1024 * 1024)
    assert len(served.chain_pem) > 1024 * 1024
    port = servers.tls(served.chain_pem, served.key_pem)
    started = time.monotonic()
    results = run_scan([Endpoint("127.0.0.1", port)], allow_private_targets=True, timeout=2)
    assert time.monotonic() - started < 2 + SLACK
    assert results[0].error is not None and results[0].error.kind is ErrorKind.TOO_LARGE
    assert results[0].elapsed < 2


def test_byte_cap_applies_to_ordinary_servers(servers: TestServers, certs: CertFactory) -> None:
    served = certs.with_intermediate("localhost")
    port = servers.tls(served.chain_pem, served.key_pem)
    results = run_scan(
        [Endpoint("127.0.0.1", port)], allow_private_targets=True, timeout=5, max_chain_bytes=200
    )
    assert results[0].error is not None and results[0].error.kind is ErrorKind.TOO_LARGE


def test_per_address_concurrency_is_bounded(servers: TestServers) -> None:
    port = servers.hostile("silent", hosts=["127.0.0.1"])
    endpoints = [Endpoint("127.0.0.1", port)] * 6
    results = run_scan(endpoints, allow_private_targets=True, timeout=0.3, per_address_concurrency=2)
    assert all(r.error is not None and r.error.kind is ErrorKind.TIMEOUT for r in results)
    assert servers.connections[port]["total"] == 6
    assert servers.connections[port]["max"] <= 2


def test_results_keep_input_order(servers: TestServers, certs: CertFactory) -> None:
    names = [f"n{i}.scan.test" for i in range(12)]
    ports = []
    for name in names:
        served = certs.valid(name)
        ports.append(servers.tls(served.chain_pem, served.key_pem, hosts=["127.0.0.1"]))
    endpoints = [Endpoint("127.0.0.1", port) for port in ports]
    results = run_scan(endpoints, ca_file=str(certs.ca_file), allow_private_targets=True, concurrency=3)
    assert [r.endpoint for r in results] == endpoints
    assert [r.leaf.dns_names[0] for r in results if r.leaf] == names


def test_tls_alert_is_classified(servers: TestServers) -> None:
    port = servers.hostile("alert", hosts=["127.0.0.1"])
    results = run_scan([Endpoint("localhost", port)], allow_private_targets=True, timeout=5)
    assert results[0].error is not None and results[0].error.kind is ErrorKind.TLS_ALERT
    assert "unrecognized name" in str(results[0].error)


def test_old_protocol_versions_are_still_scanned(servers: TestServers, certs: CertFactory) -> None:
    def tls12_only(context: ssl.SSLContext) -> None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2

    served = certs.valid("localhost")
    port = servers.tls(served.chain_pem, served.key_pem, hosts=["127.0.0.1"], configure=tls12_only)
    results = run_scan([Endpoint("localhost", port)], ca_file=str(certs.ca_file), allow_private_targets=True)
    assert results[0].state is State.OK and results[0].tls_version == "TLSv1.2"
