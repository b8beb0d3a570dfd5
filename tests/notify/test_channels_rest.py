"""REST /api/v1.0/channels through the real app (FastAPI TestClient) on every test database:
add (422 naming the problem), list (secrets redacted), test (the receiver's answer), delete;
an account's channel gets the events of the endpoints the account sees, and no other."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from keychest.config import NotifySettings, Settings
from keychest.notify.events import Hold
from keychest.scan.model import ScanOptions
from keychest.servers.notifier import Notifier
from keychest.service import accounts, domains, incidents, keys
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from keychest.web.app import create_app
from tests.notify.receiver import receiver
from tests.notify.test_channels import NOW, Clock


def app_for(db_url: str, *, allow_private: bool) -> tuple[Keychest, TestClient]:
    db = Database(db_url)
    upgrade(db)
    settings = Settings(
        db_url=db_url,
        data_dir=Path("."),
        mail_domain="keychest.test",
        scan=ScanOptions(allow_private_targets=allow_private),
        notify=NotifySettings(timeout_s=5.0),
    )
    service = Keychest(db, settings, Clock())
    return service, TestClient(create_app(service))


def confirmed_key(service: Keychest, email: str, domain: str) -> str:
    key = service.call(keys.create).key
    service.call(domains.add, key, domain)
    outcome = service.call(accounts.claim, key, email)
    service.call(accounts.confirm, outcome.account_id, outcome.api_key_id)
    return key


@pytest.fixture
def private(db_url: str) -> Iterator[tuple[Keychest, TestClient]]:
    service, client = app_for(db_url, allow_private=True)
    with client:
        yield service, client
    service.db.dispose()


def test_bad_urls_are_422_naming_the_problem(db_url: str) -> None:
    service, client = app_for(db_url, allow_private=False)
    key = confirmed_key(service, "ops@example.org", "www.example.net")
    cases = {
        "nosuchservice://x": "not a valid Apprise URL",
        "http://127.0.0.1:9/hook": "loopback address",
        "json://127.0.0.1:9/x": "loopback address",
    }
    with client:
        for url, problem in cases.items():
            answer = client.post("/api/v1.0/channels", json={"api_key": key, "url": url})
            assert answer.status_code == 422, (url, answer.text)
            assert problem in answer.json()["error"], answer.json()
        answer = client.post(
            "/api/v1.0/channels", json={"api_key": key, "url": "ftp://h.example/x", "kind": "webhook"}
        )
        assert answer.status_code == 422 and "http:// or https://" in answer.json()["error"]
        answer = client.post(
            "/api/v1.0/channels", json={"api_key": key, "url": "https://h.example/x", "secret": "hunter2"}
        )
        assert answer.status_code == 422 and "whsec_" in answer.json()["error"]
        assert client.get("/api/v1.0/channels", params={"api_key": key}).json()["channels"] == []
    service.db.dispose()


def test_unconfirmed_key_has_no_channels(private: tuple[Keychest, TestClient]) -> None:
    service, client = private
    key = service.call(keys.create).key
    answer = client.get("/api/v1.0/channels", params={"api_key": key})
    assert answer.status_code == 403


def test_channel_life(private: tuple[Keychest, TestClient]) -> None:
    service, client = private
    key = confirmed_key(service, "ops@example.org", "www.example.net")
    other = confirmed_key(service, "dev@example.org", "api.example.net")
    with receiver() as hook:
        answer = client.post(
            "/api/v1.0/channels", json={"api_key": key, "url": hook.url + "/in?token=s3cret"}
        )
        assert answer.status_code == 200, answer.text
        created = answer.json()
        secret = created["secret"]
        assert secret.startswith("whsec_")
        channel = created["channel"]
        assert channel["kind"] == "webhook" and "s3cret" not in channel["url"]
        listed = client.get("/api/v1.0/channels", params={"api_key": key}).json()["channels"]
        assert [c["id"] for c in listed] == [channel["id"]]
        assert secret not in str(listed) and listed[0]["secret"] == f"whsec_...{secret[-4:]}"
        # Another account sees none of it, and cannot delete it.
        assert client.get("/api/v1.0/channels", params={"api_key": other}).json()["channels"] == []
        gone = client.delete(f"/api/v1.0/channels/{channel['id']}", params={"api_key": other})
        assert gone.status_code == 404

        tested = client.post(f"/api/v1.0/channels/{channel['id']}/test", params={"api_key": key}).json()
        assert tested["delivered"] is True and tested["answer"].startswith("HTTP 200")
        [request] = hook.wait_for(1)
        assert request.path == "/in?token=s3cret"
        assert Webhook(secret).verify(request.body, request.headers)["type"] == "notification.test"

        # Its account's endpoint has a problem: the channel gets it; the other account's does not.
        problem_host(service, "www.example.net")
        problem_host(service, "api.example.net")
        assert service.call(incidents.run_pass).queued == 1
        asyncio.run(Notifier(service, idle_poll_s=0.01).drain())
        event = Webhook(secret).verify(hook.wait_for(2)[1].body, hook.requests[1].headers)
        assert event["endpoint"]["host"] == "www.example.net"
        assert event["account"] == {"id": event["account"]["id"], "email": "ops@example.org"}

        removed = client.delete(f"/api/v1.0/channels/{channel['id']}", params={"api_key": key})
        assert removed.status_code == 200 and removed.json()["status"] == "removed"
        assert client.get("/api/v1.0/channels", params={"api_key": key}).json()["channels"] == []


def problem_host(service: Keychest, host: str) -> None:
    """The scanner's verdict on an already-added host: wrong name."""
    from sqlalchemy import select

    from keychest.store.models import AddressState, Certificate, Endpoint

    def store(ctx) -> None:  # type: ignore[no-untyped-def]
        endpoint_id = ctx.session.scalar(select(Endpoint.id).where(Endpoint.host == host))
        now = ctx.now
        cert = Certificate(
            sha256=f"{endpoint_id:064x}", subject=f"CN={host}", issuer="O=Test CA", issuer_name="Test CA",
            not_before=now, not_after=now.replace(year=now.year + 1), subject_alt_names=["other.example"],
            key_type="EC", key_bits=256, signature_algorithm="ecdsa-with-SHA256", pem="", first_seen_at=now,
        )  # fmt: skip
        ctx.session.add(cert)
        ctx.session.flush()
        ctx.session.add(
            AddressState(
                endpoint_id=endpoint_id, ip="192.0.2.7", state="critical", certificate_id=cert.id, chain=[],
                problems=[{"code": "hostname_mismatch", "severity": "critical", "message": "m"}], since=now,
                last_scan_at=now,
            )
        )  # fmt: skip

    service.call(store)


def test_snooze_holds_events_and_sends_what_is_still_true(private: tuple[Keychest, TestClient]) -> None:
    service, client = private
    key = confirmed_key(service, "ops@example.org", "www.example.net")
    confirmed_key(service, "dev@example.org", "api.example.net")
    with receiver() as hook:
        answer = client.post("/api/v1.0/channels", json={"api_key": key, "url": hook.url})
        assert answer.status_code == 200, answer.text
        snoozed = client.post(
            "/api/v1.0/servers/snooze", json={"api_key": key, "domain": "www.example.net", "days": "2"}
        )
        assert snoozed.status_code == 200, snoozed.text
        hold = snoozed.json()["hold"]
        assert hold["kind"] == "snooze" and hold["active"] is True
        assert client.get("/api/v1.0/holds", params={"api_key": key}).json()["holds"] == [hold]
        # Not the key's server: 404, as everywhere.
        other = client.post(
            "/api/v1.0/servers/snooze", json={"api_key": key, "domain": "api.example.net", "days": "1"}
        )
        assert other.status_code == 404
        problem_host(service, "www.example.net")
        assert service.call(incidents.run_pass).queued == 0
        service.clock.now = NOW + timedelta(days=2)  # type: ignore[attr-defined]
        assert service.call(incidents.run_pass).queued == 1
    assert client.get("/api/v1.0/holds", params={"api_key": key}).json()["holds"] == []


def test_maintenance_window_rules(private: tuple[Keychest, TestClient]) -> None:
    service, client = private
    key = confirmed_key(service, "ops@example.org", "www.example.net")
    base = {"api_key": key, "domain": "www.example.net"}
    bad = {
        ("2026-12-05T22:00:00Z", "2026-12-05T21:00:00Z", "false"): "end after it starts",
        ("2026-12-05T22:00:00Z", "2026-12-13T22:00:00Z", "true"): "shorter than a week",
        ("2026-11-01T22:00:00Z", "2026-11-02T22:00:00Z", "false"): "over already",
        ("yesterday", "2026-11-02T22:00:00Z", "false"): "ISO 8601",
    }
    for (start, end, weekly), problem in bad.items():
        answer = client.post(
            "/api/v1.0/servers/maintenance", json={**base, "start": start, "end": end, "weekly": weekly}
        )
        assert answer.status_code == 422 and problem in answer.json()["error"], answer.text
    # Sundays 02:00-04:00 UTC (+01:00 given), every week.
    weekly = client.post(
        "/api/v1.0/servers/maintenance",
        json={
            **base,
            "start": "2026-11-29T03:00:00+01:00",
            "end": "2026-11-29T05:00:00+01:00",
            "weekly": "true",
        },
    )
    assert weekly.status_code == 200, weekly.text
    hold = weekly.json()["hold"]
    assert hold["starts_at"] == "2026-11-29T02:00:00Z" and hold["weekly"] is True and hold["active"] is False
    removed = client.delete(f"/api/v1.0/holds/{hold['id']}", params={"api_key": key})
    assert removed.status_code == 200
    assert client.delete(f"/api/v1.0/holds/{hold['id']}", params={"api_key": key}).status_code == 404


def test_weekly_hold_is_active_in_its_span_every_week() -> None:
    hold = Hold(datetime(2026, 11, 29, 2), datetime(2026, 11, 29, 4), weekly=True)
    assert not hold.active(datetime(2026, 11, 29, 1, 59))
    assert hold.active(datetime(2026, 11, 29, 2))
    assert not hold.active(datetime(2026, 11, 29, 4))
    assert hold.active(datetime(2027, 3, 7, 3, 30))  # a Sunday, months later
    assert not hold.active(datetime(2027, 3, 8, 3, 30))
    once = Hold(datetime(2026, 11, 29, 2), datetime(2026, 11, 29, 4))
    assert not once.active(datetime(2026, 12, 6, 3))
