"""Alert channels end to end on every test database: the channel pass queues an event once per
channel, the notifier delivers it to a real local receiver, signed per Standard Webhooks
(checked with the independent `standardwebhooks` package), shaped per the documented JSON
Schema; incidents close with their clearing event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from keychest.config import NotifySettings, Settings
from keychest.notify import signing
from keychest.scan.model import ScanOptions
from keychest.servers.notifier import Notifier
from keychest.service import domains, incidents, keys, outbox
from keychest.service.context import Ctx
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from keychest.store.models import AddressState, Certificate, Channel, OutboxMail
from tests.notify.receiver import Receiver, receiver

NOW = datetime(2026, 11, 30, 8, 5)
SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "notify-payload.schema.json").read_text())


class Clock:
    now = NOW

    def __call__(self) -> datetime:
        return self.now


def make_service(db_url: str, notify: NotifySettings) -> Keychest:
    db = Database(db_url)
    upgrade(db)
    settings = Settings(
        db_url=db_url,
        data_dir=Path("."),
        mail_domain="keychest.test",
        scan=ScanOptions(allow_private_targets=True),
        notify=notify,
    )
    return Keychest(db, settings, Clock())


@pytest.fixture
def secret() -> str:
    return signing.new_secret()


def seen(service: Keychest, domain: str, *, days_left: float, problems: list[str], state: str) -> int:
    """An endpoint (nobody's claim: server-wide channels see it anyway) the scanner judged."""
    key = service.call(keys.create).key
    endpoint_id = service.call(domains.add, key, domain).endpoint_id
    now = service.clock()

    def store(ctx: Ctx) -> None:
        cert = Certificate(
            sha256=f"{endpoint_id:064x}", subject=f"CN={domain}", issuer="O=Test CA", issuer_name="Test CA",
            not_before=now - timedelta(days=300), not_after=now + timedelta(days=days_left),
            subject_alt_names=[domain], key_type="EC", key_bits=256, signature_algorithm="ecdsa-with-SHA256",
            pem="", first_seen_at=now,
        )  # fmt: skip
        ctx.session.add(cert)
        ctx.session.flush()
        ctx.session.add(
            AddressState(
                endpoint_id=endpoint_id, ip="192.0.2.1", state=state, certificate_id=cert.id, chain=[],
                problems=[{"code": p, "severity": state, "message": p} for p in problems], since=now,
                last_scan_at=now,
            )
        )  # fmt: skip

    service.call(store)
    return endpoint_id


def set_problems(service: Keychest, endpoint_id: int, problems: list[str], state: str) -> None:
    def change(ctx: Ctx) -> None:
        row = ctx.session.scalars(select(AddressState).where(AddressState.endpoint_id == endpoint_id)).one()
        row.problems = [{"code": p, "severity": state, "message": p} for p in problems]
        row.state = state

    service.call(change)


def notifications(service: Keychest) -> list[OutboxMail]:
    return service.read(
        lambda ctx: list(
            ctx.session.scalars(
                select(OutboxMail).where(OutboxMail.channel_id.is_not(None)).order_by(OutboxMail.id)
            )
        )
    )


def drain(service: Keychest) -> None:
    asyncio.run(Notifier(service, idle_poll_s=0.01).drain())


def verified(hook: Receiver, secret: str, count: int) -> list[dict[str, Any]]:
    out = []
    for request in hook.wait_for(count):
        payload = Webhook(secret).verify(request.body, request.headers)
        jsonschema.validate(payload, SCHEMA, format_checker=jsonschema.FormatChecker())
        assert payload["id"] == request.headers["webhook-id"]
        out.append(payload)
    return out


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def test_invalid_certificate_is_an_incident_sent_once_and_closed(
    db_url: str, hook: Receiver, secret: str
) -> None:
    svc = make_service(db_url, NotifySettings(webhook_urls=(hook.url + "/hook",), webhook_secret=secret))
    endpoint_id = seen(
        svc, "www.example.net", days_left=200, problems=["hostname_mismatch"], state="critical"
    )
    assert svc.call(incidents.run_pass).queued == 1
    # A rescan (or a restart) that sees the same: nothing more.
    assert svc.call(incidents.run_pass).queued == 0
    drain(svc)
    [payload] = verified(hook, secret, 1)
    assert payload["type"] == "certificate.invalid"
    assert payload["problems"] == ["hostname_mismatch"] and payload["severity"] == "critical"
    assert payload["endpoint"] == {"host": "www.example.net", "port": 443, "ip": "192.0.2.1"}
    assert payload["certificate"]["subject"] == "CN=www.example.net"
    assert payload["certificate"]["days_left"] == 200
    assert payload["account"] is None
    [row] = notifications(svc)
    assert row.state == "sent"
    # Fixed: the incident closes with certificate.valid, once.
    set_problems(svc, endpoint_id, [], "ok")
    assert svc.call(incidents.run_pass).queued == 1
    assert svc.call(incidents.run_pass).queued == 0
    drain(svc)
    closing = verified(hook, secret, 2)[1]
    assert closing["type"] == "certificate.valid" and closing["severity"] == "info"


def test_worse_incident_replaces_the_old_one_without_a_clearing_event(
    db_url: str, hook: Receiver, secret: str
) -> None:
    svc = make_service(db_url, NotifySettings(webhook_urls=(hook.url,), webhook_secret=secret))
    endpoint_id = seen(svc, "www.example.net", days_left=200, problems=["weak_key"], state="warning")
    svc.call(incidents.run_pass)
    set_problems(svc, endpoint_id, ["weak_key", "untrusted"], "critical")
    assert svc.call(incidents.run_pass).queued == 1
    drain(svc)
    types = [(p["type"], p["severity"], p["problems"]) for p in verified(hook, secret, 2)]
    assert types == [
        ("certificate.invalid", "warning", ["weak_key"]),
        ("certificate.invalid", "critical", ["untrusted", "weak_key"]),
    ]


def test_refused_answer_marks_the_channel_failing_with_the_answer(db_url: str, secret: str) -> None:
    with receiver(status=410) as gone:
        gone.answer = b"this hook was deleted"
        svc = make_service(db_url, NotifySettings(webhook_urls=(gone.url,), webhook_secret=secret))
        seen(svc, "www.example.net", days_left=5, problems=["expires_soon"], state="critical")
        assert svc.call(incidents.run_pass).queued == 1
        drain(svc)
        gone.wait_for(1)
    [row] = notifications(svc)
    assert row.state == "failed" and row.attempts == 1
    assert (
        row.last_error is not None and "410" in row.last_error and "this hook was deleted" in row.last_error
    )
    [channel] = svc.read(lambda ctx: list(ctx.session.scalars(select(Channel))))
    assert channel.state == "failing" and "this hook was deleted" in (channel.last_error or "")


def test_server_error_is_retried_with_back_off(db_url: str, secret: str) -> None:
    with receiver(status=503) as flaky:
        svc = make_service(
            db_url, NotifySettings(webhook_urls=(flaky.url,), webhook_secret=secret, retry_base_s=30.0)
        )
        seen(svc, "www.example.net", days_left=5, problems=["expires_soon"], state="critical")
        svc.call(incidents.run_pass)
        drain(svc)
        flaky.wait_for(1)
        [row] = notifications(svc)
        assert row.state == "queued" and row.attempts == 1 and "503" in (row.last_error or "")
        assert row.next_attempt_at == NOW + timedelta(seconds=30)
        # Due again after the back-off: the same message (same webhook-id), now taken.
        flaky.status = 200
        svc.clock.now = NOW + timedelta(seconds=31)  # type: ignore[attr-defined]
        drain(svc)
        first, second = flaky.wait_for(2)
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
    [row] = notifications(svc)
    assert row.state == "sent" and row.attempts == 2


def test_min_severity(db_url: str, hook: Receiver, secret: str) -> None:
    """A channel asking for critical only gets no warning; the event is not recorded for it."""
    svc = make_service(db_url, NotifySettings(webhook_urls=(hook.url,), webhook_secret=secret))
    seen(svc, "www.example.net", days_left=200, problems=["weak_key"], state="warning")
    svc.call(incidents.run_pass)

    def critical_only(ctx: Ctx) -> None:
        for channel in ctx.session.scalars(select(Channel)):
            channel.min_severity = "critical"
        ctx.session.execute(OutboxMail.__table__.delete())

    svc.call(critical_only)
    other = seen(svc, "api.example.net", days_left=200, problems=["weak_key"], state="warning")
    assert svc.call(incidents.run_pass).queued == 0
    set_problems(svc, other, ["weak_key"], "critical")
    assert svc.call(incidents.run_pass).queued == 1


def test_removed_server_channel_skips_its_queue(db_url: str, hook: Receiver, secret: str) -> None:
    svc = make_service(db_url, NotifySettings(webhook_urls=(hook.url,), webhook_secret=secret))
    seen(svc, "www.example.net", days_left=5, problems=["expires_soon"], state="critical")
    svc.call(incidents.run_pass)
    later = Keychest(svc.db, replace(svc.settings, notify=NotifySettings()), svc.clock)
    later.call(incidents.run_pass)
    drain(later)
    [row] = notifications(later)
    assert row.state == "skipped" and row.last_error == "channel removed"
    assert hook.requests == []


def queue_more(svc: Keychest, channel_url: str, count: int) -> None:
    def add(ctx: Ctx) -> None:
        channel = ctx.session.scalars(select(Channel).where(Channel.url == channel_url)).one()
        for n in range(count):
            outbox.enqueue_notification(
                ctx,
                channel_id=channel.id,
                to_label=channel.url,
                account_id=None,
                payload={"id": f"msg_bulk{n}", "title": "bulk", "message": "bulk"},
            )

    svc.call(add)


def test_hung_channel_does_not_hold_up_a_live_one(db_url: str, secret: str) -> None:
    with receiver(hang=True) as dead, receiver() as live:
        svc = make_service(
            db_url, NotifySettings(webhook_urls=(dead.url, live.url), webhook_secret=secret, timeout_s=60.0)
        )
        seen(svc, "www.example.net", days_left=5, problems=["expires_soon"], state="critical")
        svc.call(incidents.run_pass)
        queue_more(svc, dead.url, 500)

        async def run() -> None:
            notifier = Notifier(svc, idle_poll_s=0.01)
            task = asyncio.create_task(notifier.run())
            try:
                # The dead receiver holds its request (no answer for 60 s) ...
                await asyncio.to_thread(dead.wait_for, 1)
                # ... while the live one gets its notification.
                await asyncio.to_thread(live.wait_for, 1)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(run())
        assert len(dead.requests) == 1


def test_time_out_pauses_the_channel_and_releases_its_batch(db_url: str, secret: str) -> None:
    with receiver(hang=True) as dead:
        svc = make_service(
            db_url,
            NotifySettings(webhook_urls=(dead.url,), webhook_secret=secret, timeout_s=0.3, retry_base_s=30),
        )
        svc.call(incidents.run_pass)  # the channel row
        queue_more(svc, dead.url, 50)
        drain(svc)
        dead.wait_for(1)
        rows = notifications(svc)
        tried = [r for r in rows if r.attempts]
        assert len(tried) == 1 and "no answer within 0.3 s" in (tried[0].last_error or "")
        assert {r.state for r in rows} == {"queued"}
        [channel] = svc.read(lambda ctx: list(ctx.session.scalars(select(Channel))))
        assert channel.paused_until == NOW + timedelta(seconds=30) and channel.failures == 1
        # Paused: the lease does not look at its queue at all.
        assert svc.call(outbox.lease_notifications, per_channel=20, lease_s=60) == []


def test_ack_link_stops_repeats_and_is_single_use(db_url: str, hook: Receiver, secret: str) -> None:
    from fastapi.testclient import TestClient

    from keychest.web.app import create_app

    svc = make_service(
        db_url, NotifySettings(webhook_urls=(hook.url,), webhook_secret=secret, renotify_s=3600)
    )
    endpoint_id = seen(
        svc, "www.example.net", days_left=200, problems=["hostname_mismatch"], state="critical"
    )
    svc.call(incidents.run_pass)
    drain(svc)
    [first] = verified(hook, secret, 1)
    ack_url = first["ack_url"]
    assert ack_url.startswith(svc.settings.mail.public_url + "/ack/")
    # Unacknowledged and critical: sent again once the renotify interval is over, not before.
    svc.clock.now = NOW + timedelta(minutes=59)  # type: ignore[attr-defined]
    assert svc.call(incidents.run_pass).queued == 0
    svc.clock.now = NOW + timedelta(hours=1)  # type: ignore[attr-defined]
    assert svc.call(incidents.run_pass).queued == 1
    assert svc.call(incidents.run_pass).queued == 0
    drain(svc)
    second = verified(hook, secret, 2)[1]
    assert second["type"] == "certificate.invalid" and second["ack_url"] != ack_url
    path = second["ack_url"].removeprefix(svc.settings.mail.public_url)
    with TestClient(create_app(svc)) as web:
        # The first link was replaced by the newer notification's.
        assert web.get(ack_url.removeprefix(svc.settings.mail.public_url)).status_code == 404
        page = web.get(path)
        assert page.status_code == 200 and 'method="post"' in page.text and "www.example.net" in page.text
        # A GET (a chat app's link preview) acknowledges nothing:
        assert svc.read(incidents.ack_info, path.removeprefix("/ack/")).acked is False
        done = web.post(path)
        assert done.status_code == 200 and "Acknowledged" in done.text
        assert web.post(path).status_code == 404  # single use
    svc.clock.now = NOW + timedelta(hours=10)  # type: ignore[attr-defined]
    assert svc.call(incidents.run_pass).queued == 0
    # Worse (other problems): a new incident, sent although the old one was acknowledged.
    set_problems(svc, endpoint_id, ["hostname_mismatch", "untrusted"], "critical")
    assert svc.call(incidents.run_pass).queued == 1


def test_renotify_zero_never_repeats(db_url: str, hook: Receiver, secret: str) -> None:
    svc = make_service(db_url, NotifySettings(webhook_urls=(hook.url,), webhook_secret=secret, renotify_s=0))
    seen(svc, "www.example.net", days_left=200, problems=["hostname_mismatch"], state="critical")
    assert svc.call(incidents.run_pass).queued == 1
    svc.clock.now = NOW + timedelta(days=30)  # type: ignore[attr-defined]
    assert svc.call(incidents.run_pass).queued == 0


def test_outbox_command_shows_channel_and_state(tmp_path: Path, secret: str) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'k.db'}"
    with receiver(status=404) as gone:
        gone.answer = b"no such hook"
        svc = make_service(url, NotifySettings(webhook_urls=(gone.url + "/x",), webhook_secret=secret))
        seen(svc, "www.example.net", days_left=5, problems=["expires_soon"], state="critical")
        svc.call(incidents.run_pass)
        drain(svc)
        svc.db.dispose()
    done = subprocess.run(
        [sys.executable, "-c", "from keychest.cli import main; main()", "outbox", "--db", url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["kind"] == "notification" and row["channel"].startswith("channel ")
    assert row["to"] == gone.url + "/..." and row["state"] == "failed"
    assert "HTTP 404" in row["last_error"] and "no such hook" in row["last_error"]


def test_mail_alerts_every_problem_once_and_again_when_worse(db_url: str) -> None:
    from keychest.service import accounts, alerting

    svc = make_service(db_url, NotifySettings())
    endpoint_id = seen(svc, "www.example.net", days_left=200, problems=["weak_key"], state="warning")

    raw = svc.call(keys.create).key
    svc.call(domains.add, raw, "www.example.net")
    outcome = svc.call(accounts.claim, raw, "ops@example.org")
    svc.call(accounts.confirm, outcome.account_id, outcome.api_key_id)
    assert svc.call(alerting.run_pass).alerts == 1
    assert svc.call(alerting.run_pass).alerts == 0
    set_problems(svc, endpoint_id, ["weak_key", "hostname_mismatch"], "critical")
    assert svc.call(alerting.run_pass).alerts == 1
    mails = svc.read(
        lambda ctx: list(
            ctx.session.scalars(select(OutboxMail).where(OutboxMail.kind == "alerts").order_by(OutboxMail.id))
        )
    )
    kinds = [(a["kind"], a["severity"]) for m in mails for a in m.payload["alerts"]]
    assert kinds == [("invalid", "warning"), ("invalid", "critical")]
    assert "hostname_mismatch, weak_key" in mails[1].payload["subject"]
