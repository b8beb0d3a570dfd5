"""Domain registration expiry (RDAP: domain_expires_soon, domain_expired) in mail alerts: an
alert about the registrable domain, naming it and the date, not a certificate problem that
"browsers may refuse" (issue 14 item 7, alerts)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from keychest.notify import render
from keychest.notify.alerts import Alert, Policy, decide
from keychest.notify.facts import AddressFacts, CertInfo, EndpointFacts
from keychest.service import accounts, alerting, domains, keys
from keychest.service.context import Ctx
from keychest.service.facade import Keychest
from keychest.store.models import AddressState, Certificate, Endpoint, OutboxMail
from tests.notify.test_render import CONTEXTS
from tests.support.service import service_at

NOW = datetime(2026, 12, 1, 12, 0)
DAY = timedelta(days=1)
CERT = CertInfo(1, "ab" * 32, "Test CA", NOW - 10 * DAY, NOW + 80 * DAY, False)


def facts(eid: int, name: str, problems: tuple[str, ...], expires: datetime | None) -> EndpointFacts:
    address = AddressFacts("192.0.2.1", "warning", CERT, problems=problems)
    return EndpointFacts(eid, name, (address,), "example.net", expires)


def run(
    endpoints: list[EndpointFacts], now: datetime = NOW, sent: frozenset[str] = frozenset()
) -> list[Alert]:
    return decide(endpoints, (), now, sent, Policy())


def test_expires_soon_names_the_domain_and_the_date_once() -> None:
    expires = NOW + 20 * DAY + timedelta(hours=3)
    [alert] = run([facts(1, "www.example.net", ("domain_expires_soon",), expires)])
    assert alert.kind == "domain_expires_soon" and alert.severity == "warning"
    assert alert.title == "Domain registration expires in 20 days: example.net"
    assert alert.detail.startswith("The domain example.net's registration expires on 2026-12-21 (in 20 days")
    assert "renew it at your registrar" in alert.detail.lower()
    assert "certificate" not in alert.detail and "Browsers" not in alert.detail
    assert (
        run([facts(1, "www.example.net", ("domain_expires_soon",), expires)], sent=frozenset({alert.key}))
        == []
    )


def test_one_alert_per_domain_and_critical_again_under_a_week() -> None:
    expires = NOW + 20 * DAY
    both = [
        facts(1, "www.example.net", ("domain_expires_soon",), expires),
        facts(2, "api.example.net", ("domain_expires_soon", "hostname_mismatch"), expires),
    ]
    found = run(both)
    [domain] = [a for a in found if a.kind == "domain_expires_soon"]
    assert domain.endpoints == ("api.example.net", "www.example.net")
    # The certificate problem stays a certificate problem, without the domain's code.
    [invalid] = [a for a in found if a.kind == "invalid"]
    assert "domain_expires_soon" not in invalid.detail and "hostname_mismatch" in invalid.detail
    later = NOW + 15 * DAY
    [worse] = [
        a for a in run(both, later, frozenset(a.key for a in found)) if a.kind == "domain_expires_soon"
    ]
    assert worse.severity == "critical" and "in 5 days" in worse.detail


def test_expired_registration() -> None:
    [alert] = run([facts(1, "www.example.net", ("domain_expired",), NOW - 2 * DAY)])
    assert alert.kind == "domain_expired" and alert.severity == "critical"
    assert alert.detail.startswith("The domain example.net's registration expired on 2026-11-29")


def test_only_the_domain_problem_is_no_certificate_alert() -> None:
    found = run([facts(1, "www.example.net", ("domain_expires_soon",), NOW + 10 * DAY)])
    assert [a.kind for a in found] == ["domain_expires_soon"]


@pytest.fixture
def svc(db_url: str) -> Iterator[Keychest]:
    with service_at(db_url, NOW) as service:
        yield service


def test_the_alert_mail_says_when_the_registration_expires(svc: Keychest) -> None:
    key = svc.call(keys.create).key
    outcome = svc.call(accounts.claim, key, "ops@example.org")
    svc.call(accounts.confirm, outcome.account_id, outcome.api_key_id)
    svc.call(domains.add, key, "www.example.net")

    def scanned(ctx: Ctx) -> None:
        endpoint = ctx.session.scalars(select(Endpoint)).one()
        cert = Certificate(
            sha256="ab" * 32, subject="CN=www.example.net", issuer="O=Test CA", issuer_name="Test CA",
            not_before=NOW - 10 * DAY, not_after=NOW + 80 * DAY, subject_alt_names=["www.example.net"],
            key_type="EC", key_bits=256, signature_algorithm="ecdsa-with-SHA256", pem="", first_seen_at=NOW,
        )  # fmt: skip
        ctx.session.add(cert)
        ctx.session.flush()
        problem = {"code": "domain_expires_soon", "severity": "warning", "message": "m"}
        ctx.session.add(
            AddressState(
                endpoint_id=endpoint.id, ip="192.0.2.1", state="warning", certificate_id=cert.id, chain=[],
                problems=[problem], since=NOW, last_scan_at=NOW,
            )
        )  # fmt: skip
        endpoint.registration_expires = NOW + 12 * DAY
        endpoint.last_scan_at = NOW

    svc.call(scanned)
    assert svc.call(alerting.run_pass).mails == 1
    assert svc.call(alerting.run_pass).mails == 0
    [row] = svc.read(
        lambda ctx: list(ctx.session.scalars(select(OutboxMail).where(OutboxMail.kind == "alerts")))
    )
    text, html = render.render("alerts", **{**CONTEXTS["alerts"], "alerts": row.payload["alerts"]})
    assert "The domain example.net's registration expires on 2026-12-13 (in 12 days" in " ".join(text.split())
    assert "example.net" in html and "2026-12-13" in html
    assert "Browsers may refuse" not in text
    assert row.payload["subject"] == "keychest: www.example.net domain registration expires in 12 days"


# --- channels: the same notice as a domain.* event, not certificate.invalid ---------------------


def test_channels_get_one_domain_event_per_registrable_domain_in_the_mail_words() -> None:
    from keychest.notify import events

    expires = NOW + 5 * DAY
    endpoints = [
        facts(2, "www.example.net", ("domain_expires_soon",), expires),
        facts(1, "api.example.net", ("domain_expires_soon", "hostname_mismatch"), expires),
    ]
    decision = events.decide(endpoints, [], NOW, frozenset(), {})
    [domain] = [e for e in decision.events if e.type == events.DOMAIN_EXPIRING]
    [mail] = [a for a in run(endpoints) if a.kind == "domain_expires_soon"]
    assert (domain.key, domain.title, domain.message) == (mail.key, mail.title, mail.detail)
    assert domain.severity == "critical" and domain.problems == ("domain_expires_soon",)
    assert (domain.endpoint, domain.ip, domain.certificate) == ("api.example.net", None, None)
    # The certificate problem is still its own incident, without the domain code.
    [invalid] = [e for e in decision.events if e.type == events.INVALID]
    assert invalid.problems == ("hostname_mismatch",) and invalid.endpoint == "api.example.net"
    # Once per key; an expired registration is a domain.expired event.
    assert not [
        e
        for e in events.decide(endpoints, [], NOW, frozenset({domain.key}), {}).events
        if e.type == events.DOMAIN_EXPIRING
    ]
    gone = [facts(1, "api.example.net", ("domain_expired",), NOW - DAY)]
    [expired] = events.decide(gone, [], NOW, frozenset(), {}).events
    assert expired.type == events.DOMAIN_EXPIRED and expired.severity == "critical"
