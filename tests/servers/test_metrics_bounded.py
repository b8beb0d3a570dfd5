"""/metrics stays small by default (issue 16 item 3): aggregates for everything, per-address
series only for addresses that are not ok or expire within the warning threshold."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from keychest.store.db import normalise_url
from tests.scan.certs import CertFactory
from tests.scan.tls_servers import DNSServer, TestServers
from tests.support.server import LiveServer
from tests.web.conftest import _cert

SITES = {"fine.test": 90, "later.test": 40, "soon.test": 5, "gone.test": -10}


def scrape(server: LiveServer) -> dict[str, list]:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_metrics_bounded_by_default(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    certs = CertFactory(tmp_path)
    with TestServers() as servers, DNSServer({name: ["127.0.0.1"] for name in SITES}) as dns:
        leaves = {name: _cert(certs, name, days) for name, days in SITES.items()}
        ports = {
            name: servers.tls(leaf.chain_pem, leaf.key_pem, hosts=["127.0.0.1"])
            for name, leaf in leaves.items()
        }
        server = server_factory(
            "--allow-private-targets", "--ca-file", str(certs.ca_file), "--resolver", dns.address,
            "--scan-interval", "1h",
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", server.line_port), timeout=10) as sock:
            sock.sendall(b"command apikey\n")
            key = sock.recv(4096).split(b"data ", 1)[1].split(b"\n", 1)[0].decode()
            sock.sendall(
                b"".join(f"command add apikey {key} domain {n}:{p}\n".encode() for n, p in ports.items())
            )
            answer = b""
            while answer.count(b"status ") < len(SITES):
                answer += sock.recv(4096)
        engine = sa.create_engine(normalise_url(server.db_url))
        deadline = time.monotonic() + 30
        while True:
            with engine.connect() as conn:
                left = conn.execute(
                    sa.text("SELECT count(*) FROM endpoints WHERE last_scan_at IS NULL")
                ).scalar()
            if not left:
                break
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        engine.dispose()
        families = scrape(server)

    per_address = {s.labels["host"] for s in families["keychest_ssl_cert_not_after_timestamp_seconds"]}
    # 40 and 90 days left are ok and past the 30-day warning: aggregates only.
    assert per_address == {"soon.test", "gone.test"}
    assert {s.labels["host"] for s in families["keychest_probe_success"]} == {"soon.test", "gone.test"}
    endpoints = {s.labels["state"]: s.value for s in families["keychest_endpoints"]}
    assert endpoints["ok"] == 2 and endpoints["unscanned"] == 0 and sum(endpoints.values()) == 4
    buckets = {s.labels["days_left"]: s.value for s in families["keychest_certificates"]}
    assert buckets == {"expired": 1, "lt7": 1, "lt14": 0, "lt30": 0, "lt60": 1, "lt90": 1, "more": 0}
    assert families["keychest_addresses"][0].value == 4
    earliest = families["keychest_ssl_earliest_cert_expiry"][0].value
    assert earliest < time.time() - 9 * 86400
