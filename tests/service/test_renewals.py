"""`command renewal`: stored, validated, alerted (renewal.failed, not_deployed), shown by
`expiration`, and a successful one schedules a scan."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from keychest.servers.dispatch import _expiration
from keychest.service import accounts, alerting, domains, keys, renewals
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest
from keychest.store.models import AddressState, Certificate, Endpoint, OutboxMail, RenewalReport
from tests.support.service import service_at

NOW = datetime(2026, 12, 1, 12, 0)
SHA = "ab" * 32


@pytest.fixture
def svc(db_url: str) -> Iterator[Keychest]:
    with service_at(db_url, NOW) as service:
        yield service


def confirmed_key(svc: Keychest, email: str = "ops@example.org") -> str:
    key = svc.call(keys.create).key
    outcome = svc.call(accounts.claim, key, email)
    svc.call(accounts.confirm, outcome.account_id, outcome.api_key_id)
    return key


def serve(svc: Keychest, domain: str, sha256: str, at: datetime) -> None:
    """The scanner saw `sha256` on the domain's one address at `at`."""

    def store(ctx):  # type: ignore[no-untyped-def]
        endpoint = ctx.session.scalar(select(Endpoint).where(Endpoint.host == domain))
        cert = Certificate(
            sha256=sha256, subject="CN=x", issuer="O=Test CA", issuer_name="Test CA",
            not_before=at - timedelta(days=1), not_after=at + timedelta(days=80),
            subject_alt_names=[domain], key_type="EC", key_bits=256, signature_algorithm="ecdsa-with-SHA256",
            pem="", first_seen_at=at,
        )  # fmt: skip
        ctx.session.add(cert)
        ctx.session.flush()
        ctx.session.add(
            AddressState(
                endpoint_id=endpoint.id, ip="192.0.2.1", state="ok", certificate_id=cert.id, chain=[],
                problems=[], since=at, last_scan_at=at,
            )
        )  # fmt: skip
        endpoint.last_scan_at = at
        endpoint.last_state = "ok"

    svc.call(store)


def alerts(svc: Keychest) -> list[dict[str, str]]:
    rows = svc.read(
        lambda ctx: list(ctx.session.scalars(select(OutboxMail).where(OutboxMail.kind == "alerts")))
    )
    return [alert for row in rows for alert in row.payload["alerts"]]


def test_a_report_registers_the_domain_and_is_stored(svc: Keychest) -> None:
    key = svc.call(keys.create).key
    reported = svc.call(renewals.report, key, "www.example.net", "renewed", SHA.upper(), "web1.example.org")
    assert (str(reported.domain), reported.status, reported.created) == ("www.example.net", "renewed", True)
    rows = svc.read(lambda ctx: list(ctx.session.scalars(select(RenewalReport))))
    assert [(r.status, r.sha256, r.host) for r in rows] == [("renewed", SHA, "web1.example.org")]
    # Older hooks send no sha256 and no host.
    svc.call(renewals.report, key, "www.example.net", "renewed", None, None)
    facts = svc.call(renewals.expiration_facts, key, "www.example.net")
    assert (facts.last_renewal, facts.last_renewal_status, facts.last_renewal_host) == (NOW, "renewed", None)
    svc.call(renewals.report, key, "www.example.net", "failed", None, "web2")
    answer = _expiration(svc.call(renewals.expiration_facts, key, "www.example.net"))
    assert answer.data is not None
    assert answer.data.endswith(
        "last_renewal=2026-12-01T12:00:00Z last_renewal_status=failed last_renewal_host=web2"
    )


@pytest.mark.parametrize(
    ("status", "sha256", "host", "code"),
    [
        ("done", None, None, 422),
        ("renewed", "abc", None, 422),
        ("renewed", "zz" * 32, None, 422),
        ("renewed", SHA + "00", None, 422),
        ("failed", None, "bad host;rm", 422),
    ],
)
def test_malformed_reports_are_refused(
    svc: Keychest, status: str, sha256: str | None, host: str | None, code: int
) -> None:
    key = svc.call(keys.create).key
    with pytest.raises(ServiceError) as refused:
        svc.call(renewals.report, key, "www.example.net", status, sha256, host)
    assert refused.value.code == code
    assert svc.read(lambda ctx: list(ctx.session.scalars(select(RenewalReport)))) == []


def test_unknown_key_is_401(svc: Keychest) -> None:
    with pytest.raises(ServiceError) as refused:
        svc.call(renewals.report, "x" * 30, "www.example.net", "renewed", None, None)
    assert refused.value.code == 401


def test_a_successful_renewal_schedules_a_scan(svc: Keychest) -> None:
    key = svc.call(keys.create).key
    endpoint_id = svc.call(domains.add, key, "www.example.net").endpoint_id
    serve(svc, "www.example.net", "cd" * 32, NOW - timedelta(hours=2))

    def push_back(ctx):  # type: ignore[no-untyped-def]
        ctx.session.get(Endpoint, endpoint_id).next_scan_at = NOW + timedelta(hours=6)

    svc.call(push_back)
    reported = svc.call(renewals.report, key, "www.example.net", "renewed", SHA, "web1")
    assert reported.scan_scheduled
    due = svc.read(lambda ctx: ctx.session.get(Endpoint, endpoint_id).next_scan_at)
    assert due <= NOW + timedelta(seconds=5)


def test_a_failure_is_alerted_once(svc: Keychest) -> None:
    key = confirmed_key(svc)
    svc.call(renewals.report, key, "www.example.net", "failed", None, "web1.example.org")
    assert svc.call(alerting.run_pass).mails == 1
    (alert,) = alerts(svc)
    assert alert["kind"] == "renewal.failed" and alert["severity"] == "critical"
    assert alert["detail"].startswith(
        "renewal of www.example.net failed on web1.example.org at 2026-12-01 12:00 UTC"
    )
    assert svc.call(alerting.run_pass).mails == 0


def test_a_renewed_certificate_not_served_an_hour_later_is_not_deployed(svc: Keychest) -> None:
    key = confirmed_key(svc)
    svc.call(domains.add, key, "www.example.net")
    svc.call(renewals.report, key, "www.example.net", "renewed", SHA, "web1")
    # Scanned within the hour, still the old certificate: nothing yet.
    serve(svc, "www.example.net", "cd" * 32, NOW + timedelta(minutes=30))
    svc.clock.now = NOW + timedelta(minutes=31)  # type: ignore[attr-defined]
    assert [a["kind"] for a in alerts(svc)] == [] and svc.call(alerting.run_pass).mails == 0
    # Scanned after the hour, still the old one: not_deployed, naming the address.
    svc.call(lambda ctx: ctx.session.query(AddressState).delete())
    serve(svc, "www.example.net", "ef" * 32, NOW + timedelta(minutes=61))
    svc.clock.now = NOW + timedelta(minutes=62)  # type: ignore[attr-defined]
    assert svc.call(alerting.run_pass).mails == 1
    (alert,) = alerts(svc)
    assert alert["kind"] == "not_deployed" and alert["severity"] == "warning"
    assert alert["detail"].startswith("issued on web1 at 2026-12-01 12:00 UTC, not served by 192.0.2.1")


def test_a_renewed_certificate_that_is_served_is_fine(svc: Keychest) -> None:
    key = confirmed_key(svc)
    svc.call(domains.add, key, "www.example.net")
    svc.call(renewals.report, key, "www.example.net", "renewed", SHA, "web1")
    serve(svc, "www.example.net", SHA, NOW + timedelta(minutes=61))
    svc.clock.now = NOW + timedelta(minutes=62)  # type: ignore[attr-defined]
    assert svc.call(alerting.run_pass).mails == 0
