"""`keychest serve` scans what is registered: real TLS servers, real DNS, real line API."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from pathlib import Path

import pytest

from keychest.client import LineClient
from tests.scan.certs import CertFactory
from tests.scan.tls_servers import DNSServer, TestServers, ipv6_available

pytestmark = pytest.mark.timeout(120)


def facts_of(data: str | None) -> dict[str, str]:
    return dict(item.split("=", 1) for item in (data or "").split())


def wait_for_scan(client: LineClient, key: str, domain: str, timeout: float = 10) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        reply = client.request("expiration", apikey=key, domain=domain)
        assert reply.ok, reply
        facts = facts_of(reply.data)
        if facts["state"] != "pending":
            return facts
        assert time.monotonic() < deadline, f"{domain} not scanned within {timeout}s"
        time.sleep(0.2)


def test_added_domain_is_scanned_within_seconds(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = CertFactory(tmp_path)
    with TestServers() as servers:
        port = servers.tls_trustme(certs.ca.issue_cert("localhost"), hosts=["127.0.0.1"])
        server = server_factory(
            "--allow-private-targets", "--ca-file", str(certs.ca_file), "--scan-interval", "1h"
        )
        with LineClient("127.0.0.1", server.line_port) as client:
            key = client.request("apikey").data
            assert key
            assert client.request("expiration", apikey=key, domain=f"localhost:{port}").code == 404
            added_at = time.monotonic()
            assert client.request("add", apikey=key, domain=f"localhost:{port}").ok
            facts = wait_for_scan(client, key, f"localhost:{port}")
            took = time.monotonic() - added_at
    assert took < 10
    assert facts["state"] == "ok", facts
    assert facts["trusted"] == "yes" and facts["hostname_ok"] == "yes"
    assert int(facts["days_left"]) >= 0 and facts["not_after"].endswith("Z")
    assert facts["addresses"] == "1"


def test_private_targets_refused_by_default(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = CertFactory(tmp_path)
    with TestServers() as servers:
        port = servers.tls_trustme(certs.ca.issue_cert("localhost"), hosts=["127.0.0.1"])
        server = server_factory("--ca-file", str(certs.ca_file))
        with LineClient("127.0.0.1", server.line_port) as client:
            key = client.request("apikey").data or ""
            client.request("add", apikey=key, domain=f"localhost:{port}")
            facts = wait_for_scan(client, key, f"localhost:{port}")
    assert facts["state"] == "error" and facts["errors"] == "blocked"
    assert servers.connections.get(port, {}).get("total", 0) == 0


@pytest.mark.skipif(not ipv6_available(), reason="needs ::1")
def test_stale_deployment_across_two_addresses_is_stored(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = CertFactory(tmp_path)
    now = dt.datetime.now(dt.UTC)
    old = certs.issued(
        "www.stale.test", not_before=now - dt.timedelta(days=80), not_after=now + dt.timedelta(days=10)
    )
    new = certs.issued(
        "www.stale.test", not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=89)
    )
    with TestServers() as servers, DNSServer({"www.stale.test": ["127.0.0.1", "::1"]}) as dns:
        port = servers.tls(new.chain_pem, new.key_pem, hosts=["127.0.0.1"])
        servers.tls(old.chain_pem, old.key_pem, hosts=["::1"], port=port)
        server = server_factory(
            "--allow-private-targets", "--ca-file", str(certs.ca_file), "--resolver", dns.address
        )
        with LineClient("127.0.0.1", server.line_port) as client:
            key = client.request("apikey").data or ""
            client.request("add", apikey=key, domain=f"www.stale.test:{port}")
            facts = wait_for_scan(client, key, f"www.stale.test:{port}")
    assert facts["addresses"] == "2" and facts["certificates"] == "2"
    assert facts["state"] == "warning"
    with sqlite3.connect(server.data_dir / "keychest.db") as db:
        rows = dict(db.execute("SELECT ip, problems FROM address_states").fetchall())
    assert "stale_deployment" in rows["::1"] and "stale_deployment" not in rows["127.0.0.1"]
    history = json.loads(server.cli("domains", "--json").stdout)
    assert history[0]["domain"] == f"www.stale.test:{port}"
