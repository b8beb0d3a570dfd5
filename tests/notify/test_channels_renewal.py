"""Renewal reports reach every alert channel (issue 13 item 4 with issue 12's channels): a
reported failure is a `renewal.failed` event and a renewed certificate nobody serves an hour
later a `deployment.not_deployed` one, once per report (and address) per channel, delivered to
real local receivers, signed and shaped per the documented JSON Schema."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from keychest.config import NotifySettings
from keychest.service import channels, domains, incidents, keys, renewals
from keychest.service.context import Ctx
from keychest.store.models import AddressState, Channel, OutboxMail
from tests.notify.receiver import receiver
from tests.notify.test_channels import NOW, drain, hook, make_service, secret, verified  # noqa: F401
from tests.service.test_renewals import SHA, serve

__all__ = ["hook", "secret"]


def test_a_reported_failure_reaches_every_channel_once(db_url: str, secret: str) -> None:  # noqa: F811
    with receiver() as first, receiver() as second:
        urls = (first.url + "/a", second.url + "/b")
        svc = make_service(db_url, NotifySettings(webhook_urls=urls, webhook_secret=secret))
        key = svc.call(keys.create).key
        svc.call(renewals.report, key, "www.example.net", "failed", None, "web1.example.org")
        assert svc.call(incidents.run_pass).queued == 2
        # The next pass (a rescan, a restart) sends nothing again.
        assert svc.call(incidents.run_pass).queued == 0
        drain(svc)
        payloads: list[dict[str, Any]] = verified(first, secret, 1) + verified(second, secret, 1)
        # A second failure report is another event.
        svc.call(renewals.report, key, "www.example.net", "failed", None, "web2")
        assert svc.call(incidents.run_pass).queued == 2
    for payload in payloads:
        assert payload["type"] == "renewal.failed" and payload["severity"] == "critical"
        assert payload["message"].startswith(
            "renewal of www.example.net failed on web1.example.org at 2026-11-30 08:05 UTC"
        )
        assert payload["endpoint"] == {"host": "www.example.net", "port": 443, "ip": None}
        assert payload["certificate"] is None and payload["problems"] == ["renewal_failed"]
        assert payload["ack_url"] is None


def test_a_renewed_certificate_not_served_is_a_channel_event(db_url: str, secret: str) -> None:  # noqa: F811
    with receiver() as hook_:
        svc = make_service(db_url, NotifySettings(webhook_urls=(hook_.url,), webhook_secret=secret))
        key = svc.call(keys.create).key
        svc.call(domains.add, key, "www.example.net")
        svc.call(renewals.report, key, "www.example.net", "renewed", SHA, "web1")
        serve(svc, "www.example.net", "cd" * 32, NOW + timedelta(minutes=30))
        svc.clock.now = NOW + timedelta(minutes=31)  # type: ignore[attr-defined]
        svc.call(incidents.run_pass)
        assert "deployment.not_deployed" not in svc.read(_queued_types)
        # Scanned after the hour, still not the reported certificate.
        svc.call(lambda ctx: ctx.session.query(AddressState).delete())
        serve(svc, "www.example.net", "ef" * 32, NOW + timedelta(minutes=61))
        svc.clock.now = NOW + timedelta(minutes=62)  # type: ignore[attr-defined]
        svc.call(incidents.run_pass)
        assert svc.read(_queued_types).count("deployment.not_deployed") == 1
        svc.call(incidents.run_pass)
        assert svc.read(_queued_types).count("deployment.not_deployed") == 1
        drain(svc)
        sent = verified(hook_, secret, len(svc.read(_queued_types)))
    [payload] = [p for p in sent if p["type"] == "deployment.not_deployed"]
    assert payload["severity"] == "warning" and payload["problems"] == ["not_deployed"]
    assert payload["endpoint"]["ip"] == "192.0.2.1"
    assert payload["message"].startswith("issued on web1 at 2026-11-30 08:05 UTC, not served by 192.0.2.1")


def test_a_channel_that_wants_only_critical_gets_no_not_deployed(db_url: str, secret: str) -> None:  # noqa: F811
    with receiver() as hook_:
        svc = make_service(db_url, NotifySettings(webhook_urls=(hook_.url,), webhook_secret=secret))
        svc.call(channels.ensure_server)

        def critical_only(ctx: Ctx) -> None:
            for channel in ctx.session.scalars(select(Channel)):
                channel.min_severity = "critical"

        svc.call(critical_only)
        key = svc.call(keys.create).key
        svc.call(domains.add, key, "www.example.net")
        svc.call(renewals.report, key, "www.example.net", "renewed", SHA, "web1")
        svc.call(renewals.report, key, "www.example.net", "failed", None, "web1")
        serve(svc, "www.example.net", "ef" * 32, NOW + timedelta(minutes=61))
        svc.clock.now = NOW + timedelta(minutes=62)  # type: ignore[attr-defined]
        svc.call(incidents.run_pass)
        assert svc.read(_queued_types) == ["renewal.failed"]


def _queued_types(ctx: Ctx) -> list[str]:
    rows = ctx.session.scalars(
        select(OutboxMail).where(OutboxMail.channel_id.is_not(None)).order_by(OutboxMail.id)
    )
    return [str(row.payload["type"]) for row in rows]
