"""Issue 12 in the dashboard: alert channels in the settings page and snooze / maintenance on
the server page, through the real app (FastAPI's TestClient, an httpx client) signed in with a
real one-time link, against a real local webhook receiver whose signatures are checked with
the Standard Webhooks reference library."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from keychest.service import incidents, links
from keychest.service.facade import Keychest
from keychest.service.holds import held_endpoints
from keychest.store.models import Account
from tests.notify.receiver import receiver
from tests.notify.test_channels_rest import app_for, confirmed_key

pytestmark = pytest.mark.timeout(120)

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SECRET = re.compile(r'id="channel-secret">(whsec_[^<]+)<')


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


def sign_in(service: Keychest, client: TestClient, email: str) -> None:
    path = urlsplit(service.call(links.admin_signin_link, email).url).path
    assert client.post(path, follow_redirects=False).status_code == 303


@pytest.fixture
def app(db_url: str) -> Iterator[tuple[Keychest, TestClient]]:
    service, client = app_for(db_url, allow_private=True)
    client.follow_redirects = False  # a form's answer is its redirect (POST, redirect, GET)
    with client:
        yield service, client
    service.db.dispose()


def channel_ids(page: httpx.Response) -> list[int]:
    return [int(i) for i in re.findall(r'action="/settings/channels/(\d+)/test"', page.text)]


def test_channel_add_test_fail_and_remove(app: tuple[Keychest, TestClient]) -> None:
    service, client = app
    confirmed_key(service, "ops@example.org", "www.example.net")
    sign_in(service, client, "ops@example.org")
    page = client.get("/settings")
    assert page.status_code == 200 and "No channels yet" in page.text
    token = csrf_of(page)

    # A bad URL is refused with the service's words, and what was typed comes back.
    refused = client.post("/settings/channels", data={"csrf": token, "url": "nosuchservice://x"})
    assert refused.status_code == 303 and refused.headers["location"].startswith("/settings")
    page = client.get("/settings")
    assert "not a valid Apprise URL" in page.text and 'value="nosuchservice://x"' in page.text
    assert channel_ids(page) == []

    with receiver() as hook:
        added = client.post(
            "/settings/channels",
            data={
                "csrf": token,
                "url": hook.url + "/in",
                "min_severity": "critical",
                "event_types": ["certificate.invalid", "certificate.valid"],
            },
        )
        assert added.status_code == 303
        page = client.get("/settings")
        # The secret keychest made is shown once, then only its end.
        secret = SECRET.search(page.text)
        assert secret, page.text
        whsec = secret.group(1)
        [channel] = channel_ids(page)
        again = client.get("/settings")
        assert whsec not in again.text and f"whsec_...{whsec[-4:]}" in again.text
        assert "certificate.invalid, certificate.valid" in again.text and ">critical<" in again.text

        tested = client.post(f"/settings/channels/{channel}/test", data={"csrf": token})
        assert tested.status_code == 303
        page = client.get("/settings")
        assert "Test sent: the receiver accepted it (HTTP 200" in page.text
        [request] = hook.wait_for(1)
        assert Webhook(whsec).verify(request.body, request.headers)["type"] == "notification.test"

    # A receiver that refuses: the dashboard reports its answer.
    with receiver(status=410) as gone:
        client.post("/settings/channels", data={"csrf": token, "url": gone.url + "/x", "secret": whsec})
        page = client.get("/settings")
        second = max(channel_ids(page))
        client.post(f"/settings/channels/{second}/test", data={"csrf": token})
        page = client.get("/settings")
        assert "Test failed: HTTP 410" in page.text, page.text

    # Removing asks first on a page of its own (no script needed), then acts.
    asked = client.post(f"/settings/channels/{channel}/remove", data={"csrf": token})
    assert asked.status_code == 200 and 'name="confirmed" value="yes"' in asked.text
    assert channel in channel_ids(client.get("/settings"))
    done = client.post(f"/settings/channels/{channel}/remove", data={"csrf": token, "confirmed": "yes"})
    assert done.status_code == 303
    assert channel_ids(client.get("/settings")) == [second]


def test_other_accounts_channel_is_not_reachable(app: tuple[Keychest, TestClient]) -> None:
    service, client = app
    confirmed_key(service, "ops@example.org", "www.example.net")
    confirmed_key(service, "dev@example.org", "api.example.net")
    with receiver() as hook:
        sign_in(service, client, "ops@example.org")
        token = csrf_of(client.get("/settings"))
        client.post("/settings/channels", data={"csrf": token, "url": hook.url + "/in"})
        [channel] = channel_ids(client.get("/settings"))
        client.cookies.clear()
        sign_in(service, client, "dev@example.org")
        token = csrf_of(client.get("/settings"))
        assert channel_ids(client.get("/settings")) == []
        client.post(f"/settings/channels/{channel}/test", data={"csrf": token})
        assert "no such channel" in client.get("/settings").text
        asked = client.post(f"/settings/channels/{channel}/remove", data={"csrf": token, "confirmed": "yes"})
        assert asked.status_code == 404
        assert hook.requests == []


def account_id(service: Keychest, email: str) -> int:
    found = service.call(lambda ctx: ctx.session.scalar(select(Account.id).where(Account.email == email)))
    assert found is not None
    return int(found)


def server_id(client: TestClient) -> int:
    found = re.search(r'href="/servers/(\d+)"', client.get("/servers").text)
    assert found
    return int(found.group(1))


def test_snooze_and_maintenance_on_the_server_page(app: tuple[Keychest, TestClient]) -> None:
    service, client = app
    confirmed_key(service, "ops@example.org", "www.example.net")
    sign_in(service, client, "ops@example.org")
    endpoint = server_id(client)
    page = client.get(f"/servers/{endpoint}")
    token = csrf_of(page)

    bad = client.post(f"/servers/{endpoint}/snooze", data={"csrf": token, "days": "400"})
    assert bad.status_code == 303
    assert "at most 365" in client.get(f"/servers/{endpoint}").text
    assert client.post(f"/servers/{endpoint}/snooze", data={"csrf": token, "days": "3"}).status_code == 303
    [held] = service.call(incidents.server_holds, account_id(service, "ops@example.org"), endpoint)
    assert held.kind == "snooze" and held.active
    assert service.call(held_endpoints, [endpoint]) == frozenset({endpoint})

    window = client.post(
        f"/servers/{endpoint}/maintenance",
        data={"csrf": token, "start": "2030-01-01 22:00", "end": "2030-01-02 02:00", "weekly": "on"},
    )
    assert window.status_code == 303
    refused = client.post(
        f"/servers/{endpoint}/maintenance",
        data={"csrf": token, "start": "tomorrow", "end": "2030-01-02 02:00"},
    )
    assert refused.status_code == 303
    page = client.get(f"/servers/{endpoint}")
    assert "start must be a UTC time" in page.text and 'value="tomorrow"' in page.text
    holds = re.findall(rf'action="/servers/{endpoint}/holds/(\d+)/remove"', page.text)
    assert len(holds) == 2 and "weekly" in page.text and "2030-01-01 22:00 UTC" in page.text

    asked = client.post(f"/servers/{endpoint}/holds/{holds[0]}/remove", data={"csrf": token})
    assert asked.status_code == 200 and 'name="confirmed" value="yes"' in asked.text
    done = client.post(
        f"/servers/{endpoint}/holds/{holds[0]}/remove", data={"csrf": token, "confirmed": "yes"}
    )
    assert done.status_code == 303
    assert service.call(held_endpoints, [endpoint]) == frozenset()
    left = re.findall(
        rf'action="/servers/{endpoint}/holds/(\d+)/remove"', client.get(f"/servers/{endpoint}").text
    )
    assert left == holds[1:]

    # Another account's server: no page, no snooze.
    confirmed_key(service, "dev@example.org", "api.example.net")
    client.cookies.clear()
    sign_in(service, client, "dev@example.org")
    token = csrf_of(client.get("/settings"))
    client.post(f"/servers/{endpoint}/snooze", data={"csrf": token, "days": "3"})
    assert len(service.call(incidents.server_holds, account_id(service, "ops@example.org"), endpoint)) == 1
