"""Issue 12 in the dashboard: a server page's open incidents, and acknowledging them all with
one form button, through the real app (FastAPI's TestClient) signed in with a real one-time
link, on every test database. The incidents are real: a scanned address serving a certificate
for another name, mailed by a real alerting pass, whose repeat a day later the
acknowledgement stops. Then the same in Debian's Chromium against the live server, checked by
axe-core at desktop and phone widths (as tests/web/test_accessibility.py does)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from keychest.config import NotifySettings, Settings
from keychest.service import alerting, incidents
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from keychest.store.models import OutboxMail
from keychest.web.app import create_app
from keychest.web.dashboard import NOTICES, fmt_time
from tests.notify.test_mail_ack import watched
from tests.support.service import ManualClock
from tests.web.conftest import WebEnv
from tests.web.test_accessibility import check, chromium  # noqa: F401  (its browser fixture)
from tests.web.test_dashboard_browser import CHROMIUM
from tests.web.test_dashboard_channels import csrf_of, sign_in

pytestmark = pytest.mark.timeout(120)

# Near the real time: the sign-in cookie's age is checked against the wall clock.
NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
SECTION = re.compile(r'<section class="card" id="incidents".*?</section>', re.S)


@pytest.fixture
def app(db_url: str) -> Iterator[tuple[Keychest, TestClient]]:
    db = Database(db_url)
    upgrade(db)
    settings = Settings(
        db_url=db_url, data_dir=Path("."), mail_domain="keychest.test", notify=NotifySettings(timeout_s=5.0)
    )
    service = Keychest(db, settings, ManualClock(NOW))
    client = TestClient(create_app(service))
    client.follow_redirects = False  # a form's answer is its redirect (POST, redirect, GET)
    with client:
        yield service, client
    db.dispose()


def incidents_of(page: httpx.Response) -> str:
    """The server page's "Open incidents" section."""
    assert page.status_code == 200, page.text[:500]
    found = SECTION.search(page.text)
    assert found, page.text
    return found.group(0)


def rows(section: str) -> list[list[str]]:
    body = section.split("<tbody>", 1)[1] if "<tbody>" in section else ""
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def alert_mails(service: Keychest) -> list[str]:
    """Each queued alert mail's recipient, oldest first."""
    found = service.read(
        lambda ctx: list(
            ctx.session.scalars(select(OutboxMail).where(OutboxMail.kind == "alerts").order_by(OutboxMail.id))
        )
    )
    return [row.to_addr for row in found]


def test_open_incidents_are_listed_and_acknowledged_from_the_server_page(
    app: tuple[Keychest, TestClient],
) -> None:
    service, client = app
    ops, server = watched(service, "ops@example.org", "www.example.net")
    dev, other = watched(service, "dev@example.org", "api.example.net")

    # Not alerted yet: no open incident, and no button.
    sign_in(service, client, "ops@example.org")
    section = incidents_of(client.get(f"/servers/{server}"))
    assert "No open incidents." in section and "/acknowledge" not in section

    # The alerting pass mails both accounts about their server: an open, unacknowledged
    # certificate.invalid incident each.
    assert service.call(alerting.run_pass).mails == 2
    page = client.get(f"/servers/{server}")
    section = incidents_of(page)
    assert rows(section) == [
        ["certificate.invalid", "www.example.net at 192.0.2.1", "critical", fmt_time(NOW), "no", "mail"]
    ]
    assert f'action="/servers/{server}/acknowledge"' in section and "Since (UTC)" in section
    token = csrf_of(page)

    # Without the form's CSRF token (or with another one): refused, nothing acknowledged.
    assert client.post(f"/servers/{server}/acknowledge").status_code == 403
    assert client.post(f"/servers/{server}/acknowledge", data={"csrf": "forged"}).status_code == 403
    [view] = service.read(incidents.server_incidents, ops, server)
    assert not view.acknowledged and view.told == ("mail",)

    # Another account can neither see nor acknowledge this server's incidents.
    client.cookies.clear()
    sign_in(service, client, "dev@example.org")
    own = client.get(f"/servers/{other}")
    assert [r[1] for r in rows(incidents_of(own))] == ["api.example.net at 192.0.2.1"]
    assert client.get(f"/servers/{server}").status_code == 404
    refused = client.post(f"/servers/{server}/acknowledge", data={"csrf": csrf_of(own)})
    assert refused.status_code == 404
    [view] = service.read(incidents.server_incidents, ops, server)
    assert not view.acknowledged

    # The owner acknowledges: back to the page, which says so and shows no more button.
    client.cookies.clear()
    sign_in(service, client, "ops@example.org")
    token = csrf_of(client.get(f"/servers/{server}"))
    done = client.post(f"/servers/{server}/acknowledge", data={"csrf": token})
    assert done.status_code == 303 and done.headers["location"] == f"/servers/{server}?done=acknowledged"
    page = client.get(done.headers["location"])
    assert NOTICES["acknowledged"] in page.text
    section = incidents_of(page)
    assert [r[4] for r in rows(section)] == ["yes"] and "/acknowledge" not in section
    [view] = service.read(incidents.server_incidents, ops, server)
    assert view.acknowledged
    # Acknowledging again finds nothing new and is no error.
    assert client.post(f"/servers/{server}/acknowledge", data={"csrf": token}).status_code == 303

    # A day later the unacknowledged incident (the other account's) is mailed again; the
    # acknowledged one is not.
    assert isinstance(service.clock, ManualClock)
    service.clock.now = NOW + timedelta(days=1)
    assert service.call(alerting.run_pass).mails == 1
    mails = alert_mails(service)
    assert len(mails) == 3 and mails[2] == "dev@example.org" and mails.count("ops@example.org") == 1
    assert not service.read(incidents.server_incidents, dev, other)[0].acknowledged


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium")
def test_open_incidents_in_a_browser_are_accessible(web_env: WebEnv, chromium: Any) -> None:  # noqa: F811
    email = "incidents-owner@example.org"
    key = web_env.new_key(email)
    # A server whose certificate does not name it (an IP address): a certificate.invalid incident.
    wrong_name = "127.0.0.1:" + web_env.domain("www.alpha.test").rsplit(":", 1)[1]
    with web_env.client() as client:
        added = client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": wrong_name})
        assert added.status_code == 200, added.text
    context = chromium.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    page = context.new_page()
    mail = web_env.smtp.wait_for(
        lambda m: str(m["To"]) == email and bool(web_env.smtp.links(m, "/confirm/")), timeout=20
    )
    page.goto(web_env.smtp.links(mail, "/confirm/")[0])
    page.click("button[type=submit]")
    page.wait_for_url(web_env.url + "/")
    page.goto(web_env.url + "/servers")
    server = web_env.url + str(page.locator("#servers tbody a").first.get_attribute("href"))

    # The live server scans it and its alerting pass mails the incident: the page lists it.
    deadline = time.monotonic() + 60
    button = page.locator("#incidents form[action$='/acknowledge'] button")
    while True:
        page.goto(server)
        if button.count():
            break
        assert time.monotonic() < deadline, page.locator("#incidents").inner_text()
        time.sleep(0.5)
    assert "certificate.invalid" in page.locator("#incidents").inner_text()
    failures: list[str] = []
    check(page, "server with an open incident", failures)

    page.set_viewport_size({"width": 390, "height": 900})
    button.click()
    page.wait_for_url("**?done=acknowledged")
    assert button.count() == 0
    assert page.locator("#incidents tbody td").nth(4).inner_text() == "yes"
    check(page, "server with an acknowledged incident", failures)
    context.close()
    assert failures == [], "\n".join(failures)
