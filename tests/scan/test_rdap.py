"""RDAP registration expiry: the pure parts, the client against a local RDAP server and
bootstrap file (caching, redirects, size cap, guard), and `keychest scan --rdap`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from keychest.scan.fetch import Fetcher
from keychest.scan.judge import utc_now
from keychest.scan.rdap import RdapClient, expiration_of, problems, rdap_base_urls, registrable_domain
from keychest.scan.resolve import Resolver

from .certs import CertFactory
from .test_cli import keychest
from .tls_servers import TestServers

UTC = dt.UTC
NOW = dt.datetime.now(UTC)


def _answer(domain: str, expires: dt.datetime | None) -> bytes:
    events = [{"eventAction": "registration", "eventDate": "2001-01-01T00:00:00Z"}]
    if expires is not None:
        events.append({"eventAction": "expiration", "eventDate": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})
    return json.dumps({"objectClassName": "domain", "ldhName": domain, "events": events}).encode()


class RdapServer:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.hits[self.path] += 1
                status, body, headers = server.route(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def route(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        if path == "/bootstrap.json":
            services = [[["test"], [f"{self.base}/rdap/"]], [["example"], []]]
            return 200, json.dumps({"version": "1.0", "services": services}).encode(), {}
        domain = path.rsplit("/", 1)[-1]
        if path == "/rdap/domain/moved.test":
            return 302, b"", {"Location": "/rdap/elsewhere/moved.test"}
        if path == "/rdap/domain/loop.test":
            return 302, b"", {"Location": "/rdap/domain/loop.test"}
        if domain == "big.test":
            return 200, b'{"events": [' + b" " * (1024 * 1024) + b"]}", {}
        expires = {
            "example.test": NOW + dt.timedelta(days=20, hours=12),
            "gone.test": NOW - dt.timedelta(days=3),
            "moved.test": NOW + dt.timedelta(days=400),
        }.get(domain)
        return 200, _answer(domain, expires), {"Content-Type": "application/rdap+json"}

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def rdap_server() -> Iterator[RdapServer]:
    server = RdapServer()
    yield server
    server.close()


def test_registrable_domains_from_the_bundled_list() -> None:
    assert registrable_domain("www.example.co.uk") == "example.co.uk"
    assert registrable_domain("a.b.example.com") == "example.com"
    assert registrable_domain("x.github.io") == "github.io"  # ICANN section: registered at .io
    assert registrable_domain("co.uk") is None
    assert registrable_domain("192.0.2.1") is None


def test_bootstrap_longest_suffix_and_https_first() -> None:
    bootstrap = {"services": [[["uk"], ["http://uk/"]], [["co.uk"], ["http://co/", "https://co/"]]]}
    assert rdap_base_urls(bootstrap, "example.co.uk") == ["https://co/", "http://co/"]
    assert rdap_base_urls(bootstrap, "example.org") == []


def test_expiration_and_problems() -> None:
    assert expiration_of(json.loads(_answer("a.test", None))) is None
    in_20 = NOW + dt.timedelta(days=20, hours=1)
    assert expiration_of(json.loads(_answer("a.test", in_20))) == in_20.replace(microsecond=0)
    assert [(p.code, p.severity.name) for p in problems("a.test", in_20, NOW)] == [
        ("domain_expires_soon", "WARNING")
    ]
    assert problems("a.test", NOW + dt.timedelta(days=3), NOW)[0].severity.name == "CRITICAL"
    assert problems("a.test", NOW - dt.timedelta(seconds=1), NOW)[0].code == "domain_expired"
    assert problems("a.test", NOW + dt.timedelta(days=90), NOW) == []


def _client(server: RdapServer, allow_private: bool = True) -> RdapClient:
    fetcher = Fetcher(Resolver(5.0), timeout=5.0, max_bytes=512 * 1024, allow_private_targets=allow_private)
    return RdapClient(fetcher, utc_now, f"{server.base}/bootstrap.json")


def test_client_caches_redirects_and_caps(rdap_server: RdapServer) -> None:
    async def run() -> dict[str, object]:
        client = _client(rdap_server)
        names = [
            "www.example.test",
            "mail.example.test",
            "a.b.example.test",
            "moved.test",
            "loop.test",
            "big.test",
        ]
        found = await asyncio.gather(*(client.lookup(name) for name in names))
        again = await client.lookup("api.example.test")
        return {"found": found, "again": again, "lookups": client.lookups}

    before = rdap_server.hits.copy()
    out = asyncio.run(run())
    hits = rdap_server.hits - before
    found = out["found"]
    assert all(r.domain == "example.test" and r.expires is not None for r in found[:3])  # type: ignore[index,union-attr]
    assert out["again"].expires == found[0].expires  # type: ignore[attr-defined,index,union-attr]
    assert (
        hits["/rdap/domain/example.test"] == 1 and hits["/bootstrap.json"] == 1
    )  # one lookup per domain a day
    assert found[3].expires is not None  # type: ignore[index,union-attr]  # followed the redirect
    assert found[4].expires is None and "redirects" in found[4].error  # type: ignore[index,union-attr,operator]
    assert found[5].expires is None and "larger than" in found[5].error  # type: ignore[index,union-attr,operator]


def test_private_address_guard(rdap_server: RdapServer) -> None:
    before = sum(rdap_server.hits.values())
    registration = asyncio.run(_client(rdap_server, allow_private=False).lookup("www.example.test"))
    assert registration is not None and registration.expires is None
    assert "bootstrap" in (registration.error or "")
    assert sum(rdap_server.hits.values()) == before  # refused before connecting


def test_scan_rdap_json_and_problems(
    rdap_server: RdapServer, servers: TestServers, certs: CertFactory
) -> None:
    cert = certs.valid("www.example.test", "www.gone.test")
    port = servers.tls(cert.chain_pem, cert.key_pem, hosts=["127.0.0.1"])
    done = keychest(
        "--json", "--allow-private-targets", "--ca-file", str(certs.ca_file), "--no-old-protocols",
        "--rdap-bootstrap", f"{rdap_server.base}/bootstrap.json",
        "--resolve", f"www.example.test:{port}:127.0.0.1", "--resolve", f"www.gone.test:{port}:127.0.0.1",
        f"www.example.test:{port}", f"www.gone.test:{port}",
    )  # fmt: skip
    soon, gone = json.loads(done.stdout)
    assert soon["registration_expires"] == (NOW + dt.timedelta(days=20, hours=12)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert [(p["code"], p["severity"]) for p in soon["problems"]] == [("domain_expires_soon", "warning")]
    assert soon["state"] == "warning"
    assert [p["code"] for p in gone["problems"]] == ["domain_expired"] and gone["state"] == "critical"
    assert done.returncode == 2
    # Without --rdap nothing is asked and the field is null.
    plain = json.loads(
        keychest(
            "--json", "--allow-private-targets", "--ca-file", str(certs.ca_file),
            "--resolve", f"www.example.test:{port}:127.0.0.1", f"www.example.test:{port}",
        ).stdout
    )  # fmt: skip
    assert plain[0]["registration_expires"] is None
