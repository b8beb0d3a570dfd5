"""One live `keychest serve` for every web test (REST, metrics, OpenAPI run, browser).

It scans real TLS servers on loopback, found through a loopback DNS server, with
certificates from a test CA it trusts (--ca-file), and mails through an aiosmtpd sink.
Tests keep out of each other's way by using accounts (emails) of their own.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.notify.smtp import SmtpSink
from tests.scan.certs import CertFactory, ServerCert
from tests.scan.tls_servers import DNSServer, TestServers
from tests.support.net import free_port, wait_for_port
from tests.support.server import LiveServer

# Names the test DNS server answers (all 127.0.0.1), and what each TLS server serves.
SITES = {
    "www.alpha.test": 90,  # days left: fine
    "api.alpha.test": 5,  # renewal due, within 7 days
    "old.alpha.test": -10,  # expired
    "shop.beta.test": 40,
}


@dataclass
class WebEnv:
    server: LiveServer
    smtp: SmtpSink
    certs: CertFactory
    ports: dict[str, int]
    leaves: dict[str, ServerCert] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.http_url

    def domain(self, name: str) -> str:
        return f"{name}:{self.ports[name]}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)

    def new_key(self, email: str) -> str:
        with self.client() as client:
            answer = client.get(f"/api/v1.0/access/claim/{email}")
            assert answer.status_code == 200, answer.text
            return answer.json()["api_key"]

    def wait_scanned(self, key: str, domain: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                answer = client.get(f"/api/v1.0/servers/expiration/{domain}", params={"api_key": key})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                if body["last_scan_utc"] is not None and body["results"]:
                    return body
                assert time.monotonic() < deadline, f"{domain} not scanned within {timeout}s"
                time.sleep(0.2)


def _cert(certs: CertFactory, name: str, days: int) -> ServerCert:
    now = dt.datetime.now(dt.UTC)
    if days < 0:
        return certs.issued(
            name, not_before=now - dt.timedelta(days=90), not_after=now + dt.timedelta(days=days)
        )
    return certs.issued(name, not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=days))


@pytest.fixture(scope="package")
def web_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebEnv]:
    base = tmp_path_factory.mktemp("web")
    certs = CertFactory(Path(base))
    with (
        SmtpSink() as smtp,
        TestServers() as servers,
        DNSServer({name: ["127.0.0.1"] for name in SITES}) as dns,
    ):
        leaves = {name: _cert(certs, name, days) for name, days in SITES.items()}
        ports = {
            name: servers.tls(leaf.chain_pem, leaf.key_pem, hosts=["127.0.0.1"])
            for name, leaf in leaves.items()
        }
        data = base / "data"
        data.mkdir()
        line_port, http_port = free_port(), free_port()
        url = f"sqlite:///{data / 'keychest.db'}"
        args = [
            "--db", url,
            "--data-dir", str(data),
            "--line-listen", f"127.0.0.1:{line_port}",
            "--http-listen", f"127.0.0.1:{http_port}",
            "--mail-domain", "keychest.test",
            "--allow-private-targets",
            "--ca-file", str(certs.ca_file),
            "--resolver", dns.address,
            "--scan-interval", "1h",
            "--keys-per-ip-per-hour", "0",
            # Every test shares 127.0.0.1; the REST limits have a server of their own in test_rest_limits.
            "--rest-requests-per-minute", "0",
            "--rest-failed-keys-per-minute", "0",
            "--smtp", smtp.address,
            "--public-url", f"http://127.0.0.1:{http_port}",
            # Per-address series for the healthy sites too (test_metrics reads them); the
            # bounded default is tested in tests/servers/test_metrics_bounded.py.
            "--metrics-per-endpoint", "all",
        ]  # fmt: skip
        server = LiveServer(data, url, line_port, http_port, args, data / "serve.log")
        server.start()
        wait_for_port(http_port)
        try:
            yield WebEnv(server, smtp, certs, ports, leaves)
        finally:
            server.stop()


@dataclass
class LimitedEnv:
    """A server of its own with low REST limits and a /metrics token (the shared one has none)."""

    server: LiveServer
    metrics_token: str
    per_minute: int = 5
    failed_keys_per_minute: int = 3

    def client(self, source: str) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(base_url=self.server.http_url, transport=transport, timeout=10)


@pytest.fixture(scope="package")
def limited_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LimitedEnv]:
    from tests.support.server import start_server

    base = tmp_path_factory.mktemp("limited")
    token_file = base / "metrics.token"
    token_file.write_text("s3cret-metrics-token-0123\n")
    server = start_server(
        base / "data",
        "--rest-requests-per-minute", "5",
        "--rest-failed-keys-per-minute", "3",
        "--keys-per-ip-per-hour", "0",
        "--metrics-token-file", str(token_file),
    )  # fmt: skip
    try:
        wait_for_port(server.http_port)
        yield LimitedEnv(server, "s3cret-metrics-token-0123")
    finally:
        server.stop()
