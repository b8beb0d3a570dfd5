"""The alert and weekly passes on every test database: once per key, in the outbox's transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import select

from keychest.service import accounts, alerting, domains, keys, preferences, reports
from keychest.service.facade import Keychest
from keychest.store.models import AddressState, AlertSent, Certificate, OutboxMail
from tests.support.service import service_at

MONDAY = datetime(2026, 11, 30, 8, 5)


@pytest.fixture
def svc(db_url: str) -> Iterator[Keychest]:
    with service_at(db_url, MONDAY) as service:
        yield service


def seen(service: Keychest, email: str, domain: str, days_left: float) -> int:
    """An active account watching a domain the scanner found serving a certificate."""
    key = service.call(keys.create).key
    endpoint_id = service.call(domains.add, key, domain).endpoint_id
    outcome = service.call(accounts.claim, key, email)
    service.call(accounts.confirm, outcome.account_id, outcome.api_key_id)
    now = service.clock()

    def store(ctx):  # type: ignore[no-untyped-def]
        cert = Certificate(
            sha256=f"{endpoint_id:064x}", subject="CN=x", issuer="O=Test CA", issuer_name="Test CA",
            not_before=now - timedelta(days=300), not_after=now + timedelta(days=days_left),
            subject_alt_names=[domain], key_type="EC", key_bits=256, signature_algorithm="ecdsa-with-SHA256",
            pem="", first_seen_at=now,
        )  # fmt: skip
        ctx.session.add(cert)
        ctx.session.flush()
        ctx.session.add(
            AddressState(
                endpoint_id=endpoint_id, ip="192.0.2.1", state="warning", certificate_id=cert.id, chain=[],
                problems=[], since=now, last_scan_at=now,
            )
        )  # fmt: skip

    service.call(store)
    return outcome.account_id


def mails(service: Keychest, kind: str) -> list[OutboxMail]:
    return service.read(
        lambda ctx: list(ctx.session.scalars(select(OutboxMail).where(OutboxMail.kind == kind)))
    )


def test_alert_pass_queues_once_per_threshold(svc: Keychest) -> None:
    account_id = seen(svc, "ops@example.org", "www.example.net", 5)
    first = svc.call(alerting.run_pass)
    assert (first.mails, first.alerts) == (1, 1)
    assert svc.call(alerting.run_pass).mails == 0
    [mail] = mails(svc, "alerts")
    assert mail.to_addr == "ops@example.org" and mail.payload["alerts"][0]["kind"] == "expiry"
    keys_sent = svc.read(lambda ctx: list(ctx.session.scalars(select(AlertSent.alert_key))))
    assert keys_sent == [mail.payload["alerts"][0]["key"]]
    # Two days on, the 3-day threshold: one more.
    svc.clock.now = MONDAY + timedelta(days=2, hours=1)  # type: ignore[attr-defined]
    assert svc.call(alerting.run_pass).mails == 1
    # Alerts switched off: nothing, even at the 1-day threshold.
    svc.call(partial(preferences.update, alerts_enabled=False), account_id)
    svc.clock.now = MONDAY + timedelta(days=4, hours=1)  # type: ignore[attr-defined]
    assert svc.call(alerting.run_pass).mails == 0
    svc.clock.now = MONDAY  # type: ignore[attr-defined]


def test_weekly_pass_queues_once_per_week_and_only_with_news(svc: Keychest) -> None:
    seen(svc, "news@example.org", "soon.example.net", 5)
    seen(svc, "calm@example.org", "calm.example.net", 200)
    outcomes = {o.email: o for o in svc.call(reports.weekly_pass)}
    assert outcomes["news@example.org"].queued and outcomes["news@example.org"].period == "weekly:2026-11-30"
    assert outcomes["calm@example.org"].reason == "nothing to report"
    assert {o.reason for o in svc.call(reports.weekly_pass)} == {"not due"}
    [mail] = mails(svc, "weekly")
    assert mail.to_addr == "news@example.org"
    assert [r["endpoint"] for r in mail.payload["report"]["expiring_soon"]] == ["soon.example.net"]
