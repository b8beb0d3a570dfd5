"""The scanner's revocation answer and the CA's ARI renewal window, kept per address by
``scans.record`` (migration 0015) and shown by the service's views, REST (servers/expiration
and servers/lookup) and the dashboard's server page, on every test database.

The scans are real: a TLS server on 127.0.0.1 stapling an OCSP response of a private ACME CA,
whose directory and renewalInfo resource a local HTTPS responder serves (the harnesses of
tests/scan/test_renewal_scan.py). A later scan that fails stores no answer (null): the row is
the last scan's view of the address, and that scan saw no certificate to check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
import shutil
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
from cryptography import x509
from cryptography.x509 import ocsp
from fastapi.testclient import TestClient

from keychest.config import NotifySettings, Settings
from keychest.scan import ari
from keychest.scan.model import AddressResult, ScanOptions
from keychest.scan.report import result_to_json
from keychest.scan.runner import Scanner
from keychest.scan.targets import Endpoint, parse_resolve
from keychest.service import accounts, domains, keys, links, overview, scans
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from keychest.web.app import create_app
from tests.scan.pki import MiniCA, pem
from tests.scan.responders import Responder
from tests.scan.test_renewal_checks import AriServer
from tests.scan.test_renewal_scan import stapling_server
from tests.support.service import ManualClock
from tests.web.test_accessibility import check, chromium  # noqa: F401  (its browser fixture)
from tests.web.test_dashboard_browser import CHROMIUM

pytestmark = pytest.mark.timeout(120)

DAY = dt.timedelta(days=1)
NAME = "www.example.test"
EMAIL = "ops@example.org"
# Near the real time: the scanned certificate, the staple and the sign-in cookie are checked
# against the wall clock.
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass
class Site:
    """A TLS server for NAME stapling OCSP, and its CA's ARI server; `scan()` scans it."""

    acme: MiniCA
    leaf: x509.Certificate
    ca_file: str
    ari: AriServer
    staple: bytes  # what the TLS server staples (b"": nothing)
    port: int = 0
    broken: bool = False  # the TLS server aborts every handshake

    def stapled(self) -> bytes:
        if self.broken:
            raise ConnectionAbortedError("the server is broken")
        return self.staple

    def window(
        self, start: dt.datetime, end: dt.datetime, why: str | None = "https://ca.example/why"
    ) -> None:
        self.ari.windows[ari.cert_id(self.leaf) or ""] = (start, end, why)

    def scan(self, *, expect_error: bool = False) -> list[AddressResult]:
        options = ScanOptions(
            timeout=5,
            allow_private_targets=True,
            ca_file=self.ca_file,
            old_protocols=False,
            acme_directories=(f"{self.ari.base}/directory",),
            resolve=(parse_resolve(f"{NAME}:{self.port}:127.0.0.1"),),
        )
        # In a thread of its own: with Chromium up, Playwright runs an event loop in this one.
        with ThreadPoolExecutor(1) as pool:
            results = pool.submit(
                asyncio.run, Scanner(options).scan_endpoint(Endpoint(NAME, self.port))
            ).result()
        assert [r.error is not None for r in results] == [expect_error], results
        return list(results)


def staple_of(acme: MiniCA, leaf: x509.Certificate, status: ocsp.OCSPCertStatus) -> bytes:
    return acme.ocsp_response(leaf, status, this_update=NOW - dt.timedelta(hours=1), next_update=NOW + DAY)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Site]:
    tls_ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1").configure_cert(context)
    acme = MiniCA(organization="Private ACME CA")
    leaf, key = acme.leaf(NAME, not_before=NOW - DAY)
    # One file for both: the scanned chain's anchor and the ARI server's TLS certificate.
    path = tmp_path / "cas.pem"
    path.write_bytes(pem(acme.cert) + tls_ca.cert_pem.bytes())
    server = AriServer()
    web = Site(acme, leaf, str(path), server, staple_of(acme, leaf, ocsp.OCSPCertStatus.GOOD))
    routes: dict[str, Any] = {"/directory": server.directory, "*": server.renewal_info}
    with (
        Responder(routes, tls=context) as responder,
        stapling_server([leaf, acme.cert], key, web.stapled) as port,
    ):
        server.base = f"https://127.0.0.1:{responder.port}"
        web.port = port
        yield web


@pytest.fixture
def app(db_url: str) -> Iterator[tuple[Keychest, TestClient]]:
    db = Database(db_url)
    upgrade(db)
    settings = Settings(
        db_url=db_url,
        data_dir=Path("."),
        mail_domain="keychest.test",
        scan=ScanOptions(allow_private_targets=True),
        notify=NotifySettings(timeout_s=5.0),
    )
    service = Keychest(db, settings, ManualClock(NOW.replace(tzinfo=None)))
    client = TestClient(create_app(service))
    client.follow_redirects = False
    with client:
        yield service, client
    db.dispose()


def watched(service: Keychest, client: TestClient, port: int) -> tuple[str, int]:
    """A confirmed account's key watching NAME:port, signed in to the dashboard."""
    key = service.call(keys.create).key
    endpoint_id = service.call(domains.add, key, f"{NAME}:{port}").endpoint_id
    outcome = service.call(accounts.claim, key, EMAIL)
    service.call(accounts.confirm, outcome.account_id, outcome.api_key_id)
    path = urlsplit(service.call(links.admin_signin_link, EMAIL).url).path
    assert client.post(path).status_code == 303
    return key, endpoint_id


def rest_records(client: TestClient, key: str, port: int) -> list[dict[str, Any]]:
    """The per-address records of servers/expiration, checked to equal servers/lookup's."""
    expiration = client.get(f"/api/v1.0/servers/expiration/{NAME}:{port}", params={"api_key": key})
    lookup = client.get(f"/api/v1.0/servers/lookup/{NAME}:{port}", params={"api_key": key})
    assert expiration.status_code == 200 and lookup.status_code == 200, (expiration.text, lookup.text)
    records: list[dict[str, Any]] = expiration.json()["results"]
    assert lookup.json()["expiration"]["results"] == records
    return records


def checks_line(client: TestClient, endpoint_id: int) -> str | None:
    """The server page's revocation and ARI line of the one address, as text; None if absent."""
    page = client.get(f"/servers/{endpoint_id}")
    assert page.status_code == 200, page.text[:500]
    found = re.search(r'<tr class="sub checks">(.*?)</tr>', page.text, re.S)
    if found is None:
        return None
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split())


def utc(moment: dt.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M}"


def test_revocation_and_ari_are_stored_and_shown(app: tuple[Keychest, TestClient], web: Site) -> None:
    service, client = app
    key, endpoint_id = watched(service, client, web.port)
    # Before the window: what users of short-lived certificates need to see ahead of time.
    start, end = NOW + 2 * DAY, NOW + 4 * DAY
    web.window(start, end)
    [result] = web.scan()
    assert result.revocation is not None and result.ari is not None
    service.call(scans.record, endpoint_id, [result], interval_s=3600)

    # The service's views give back the scanner's own types, the same answer.
    [view] = service.read(scans.address_views, endpoint_id)
    assert view.revocation == result.revocation
    assert view.ari is not None and view.ari.as_dict() == result.ari.as_dict()
    account_id = service.call(accounts.claim, key, EMAIL).account_id
    [detail] = service.read(overview.server_detail, account_id, endpoint_id).addresses
    assert detail.revocation == result.revocation and detail.ari == view.ari and detail.ari_phase is None

    # REST: the shape `keychest scan --json` prints, beside every field there was before.
    printed = result_to_json(result)
    [record] = rest_records(client, key, web.port)
    assert (
        record["revocation"]
        == printed["revocation"]
        == {
            "status": "good",
            "method": "stapled",
            "revoked_at": None,
            "reason": None,
            "error": None,
        }
    )
    assert (
        record["ari"]
        == printed["ari"]
        == {
            "window_start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "window_end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "explanation_url": "https://ca.example/why",
            "checked_at": printed["ari"]["checked_at"],
        }
    )
    assert record["problems"] == [] and record["state"] == "ok" and record["certificate_found"] is True

    # The dashboard: the window ahead, nothing due yet.
    line = checks_line(client, endpoint_id)
    assert line == (
        f"Revocation: good (stapled OCSP) CA renewal window (ARI): {utc(start)} – {utc(end)} UTC"
        " · the CA explains"
    ), line

    # The window has started: renewal due now, in the problem's words too.
    web.window(NOW - DAY, NOW + DAY, None)
    [due] = web.scan()
    service.call(scans.record, endpoint_id, [due], interval_s=3600)
    assert [p.code for p in service.read(scans.address_views, endpoint_id)[0].problems] == ["ari_renewal_due"]
    line = checks_line(client, endpoint_id)
    assert line is not None and line.endswith(f"{utc(NOW - DAY)} – {utc(NOW + DAY)} UTC · renewal due now")
    assert '<strong class="soon">renewal due now</strong>' in client.get(f"/servers/{endpoint_id}").text

    # Moved into the past (a revocation announced): window passed.
    web.window(NOW - 3 * DAY, NOW - DAY)
    [passed] = web.scan()
    service.call(scans.record, endpoint_id, [passed], interval_s=3600)
    line = checks_line(client, endpoint_id)
    assert line is not None and "· window passed" in line, line
    assert rest_records(client, key, web.port)[0]["problems"] == ["ari_window_passed"]

    # The server breaks off every handshake: that scan checked nothing, and the stored answers go with it.
    web.broken = True
    failed = web.scan(expect_error=True)
    service.call(scans.record, endpoint_id, failed, interval_s=3600)
    [view] = service.read(scans.address_views, endpoint_id)
    assert view.error is not None and view.revocation is None and view.ari is None
    [record] = rest_records(client, key, web.port)
    assert record["revocation"] is None and record["ari"] is None and record["error"]
    assert checks_line(client, endpoint_id) is None


def test_a_revoked_certificate_and_a_scan_without_the_check(
    app: tuple[Keychest, TestClient], web: Site
) -> None:
    service, client = app
    key, endpoint_id = watched(service, client, web.port)
    # No renewalInfo for this certificate: no ARI answer, stored as null.
    web.staple = staple_of(web.acme, web.leaf, ocsp.OCSPCertStatus.REVOKED)
    [result] = web.scan()
    revoked = result.revocation
    assert result.ari is None and revoked is not None and revoked.status == "revoked"
    service.call(scans.record, endpoint_id, [result], interval_s=3600)
    [record] = rest_records(client, key, web.port)
    assert record["revocation"] == result_to_json(result)["revocation"]
    assert record["revocation"]["status"] == "revoked" and record["ari"] is None
    assert "revoked" in record["problems"]
    assert revoked.revoked_at is not None and revoked.reason
    line = checks_line(client, endpoint_id)
    assert line == f"Revocation: revoked on {revoked.revoked_at:%Y-%m-%d} ({revoked.reason})", line


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium")
def test_the_lines_are_accessible(app: tuple[Keychest, TestClient], web: Site, chromium: Any) -> None:  # noqa: F811
    """The server page with both lines (renewal due now emphasised), in Chromium through the
    real app, checked by axe-core at desktop and phone widths as tests/web/test_accessibility.py
    does."""
    service, client = app
    _, endpoint_id = watched(service, client, web.port)
    web.window(NOW - DAY, NOW + DAY)
    service.call(scans.record, endpoint_id, web.scan(), interval_s=3600)
    origin = "http://keychest.test"

    def through_the_app(route: Any) -> None:
        parts = urlsplit(route.request.url)
        answer = client.request(route.request.method, parts.path + (f"?{parts.query}" if parts.query else ""))
        headers = {k: v for k, v in answer.headers.items() if k not in ("content-encoding", "content-length")}
        route.fulfill(status=answer.status_code, headers=headers, body=answer.content)

    context = chromium.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    try:
        context.route(f"{origin}/**", through_the_app)
        page = context.new_page()
        page.goto(f"{origin}/servers/{endpoint_id}")
        assert "renewal due now" in page.locator("tr.checks").inner_text()
        # The stylesheet came through the app too (axe judges the colours it sets).
        colour = page.evaluate("getComputedStyle(document.querySelector('tr.checks strong')).color")
        assert colour not in ("rgb(0, 0, 0)", ""), colour
        failures: list[str] = []
        check(page, "server with revocation and ARI", failures, nav=False)
    finally:
        context.close()
    assert failures == [], "\n".join(failures)
