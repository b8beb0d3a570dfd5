"""Renewal reports from the machines: `command renewal apikey K domain D status renewed|failed
[sha256 H] [host NAME]`, sent by the hook after every certbot (or lego, dehydrated) run.

A report registers D for the key like `add` does (and, like a re-`add`, schedules a scan of
it: the new certificate should be served within seconds). Failures become `renewal.failed`
alerts; a reported certificate that no address of D serves an hour later is `not_deployed`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy import func, select

from keychest.notify import renewals as renewal_rules
from keychest.service import domains, errors, keys, scans, visibility
from keychest.service.context import Ctx
from keychest.store.models import AddressState, Certificate, Endpoint, RenewalReport

STATUSES = ("renewed", "failed")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# A machine's name as `hostname` prints it, short or fully qualified.
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})")
# How long a renewed certificate may take to reach every address before it is `not_deployed`.
DEPLOY_GRACE = timedelta(hours=1)
# Failures are alerted while they are this recent (a late first alert pass still sends them).
ALERT_WINDOW = timedelta(days=7)


@dataclass(frozen=True)
class Reported:
    domain: domains.DomainName
    status: str
    created: bool  # the domain was not watched by this key before
    scan_scheduled: bool


@dataclass(frozen=True)
class LastRenewal:
    at: datetime
    status: str
    host: str | None
    sha256: str | None


def report(
    ctx: Ctx, raw_key: str, domain_text: str, status: str, sha256: str | None = None, host: str | None = None
) -> Reported:
    status = status.lower()
    if status not in STATUSES:
        raise errors.invalid(f"status must be renewed or failed, not {status[:20]!r}")
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise errors.invalid("sha256 must be 64 hex digits: the SHA-256 of the new certificate's DER")
    if host is not None and not _HOST.fullmatch(host):
        raise errors.invalid("host must be a machine name: letters, digits, '.', '-', '_'")
    added = domains.add(ctx, raw_key, domain_text)
    key = keys.find(ctx, raw_key)
    assert key is not None  # add() accepted it
    ctx.session.add(
        RenewalReport(
            endpoint_id=added.endpoint_id,
            api_key_id=key.id,
            status=status,
            sha256=sha256.lower() if sha256 else None,
            host=host,
            reported_at=ctx.now,
            ip=ctx.ip,
        )
    )
    scheduled = added.created or added.scan_scheduled
    return Reported(added.domain, status, added.created, scheduled)


def last_renewals(ctx: Ctx, endpoint_ids: list[int]) -> dict[int, LastRenewal]:
    """The latest report per endpoint."""
    if not endpoint_ids:
        return {}
    latest = (
        select(RenewalReport.endpoint_id, func.max(RenewalReport.id).label("id"))
        .where(RenewalReport.endpoint_id.in_(endpoint_ids))
        .group_by(RenewalReport.endpoint_id)
        .subquery()
    )
    rows = ctx.session.scalars(select(RenewalReport).join(latest, RenewalReport.id == latest.c.id))
    return {r.endpoint_id: LastRenewal(r.reported_at, r.status, r.host, r.sha256) for r in rows}


@dataclass(frozen=True)
class Failure:
    report_id: int
    endpoint_id: int
    host: str | None
    at: datetime


def recent_failures(ctx: Ctx, endpoint_ids: list[int]) -> list[Failure]:
    if not endpoint_ids:
        return []
    rows = ctx.session.execute(
        select(RenewalReport.id, RenewalReport.endpoint_id, RenewalReport.host, RenewalReport.reported_at)
        .where(
            RenewalReport.endpoint_id.in_(endpoint_ids),
            RenewalReport.status == "failed",
            RenewalReport.reported_at >= ctx.now - ALERT_WINDOW,
        )
        .order_by(RenewalReport.id)
    )
    return [Failure(*row) for row in rows]


@dataclass(frozen=True)
class NotDeployed:
    report_id: int
    endpoint_id: int
    ip: str
    host: str | None
    at: datetime
    sha256: str


def not_deployed(ctx: Ctx, endpoint_ids: list[int]) -> list[NotDeployed]:
    """Addresses that, scanned more than DEPLOY_GRACE after the latest `renewed` report with a
    SHA-256, still do not serve that certificate while no address of the domain does."""
    if not endpoint_ids:
        return []
    latest = (
        select(RenewalReport.endpoint_id, func.max(RenewalReport.id).label("id"))
        .where(
            RenewalReport.endpoint_id.in_(endpoint_ids),
            RenewalReport.status == "renewed",
            RenewalReport.sha256.is_not(None),
        )
        .group_by(RenewalReport.endpoint_id)
        .subquery()
    )
    reports = list(ctx.session.scalars(select(RenewalReport).join(latest, RenewalReport.id == latest.c.id)))
    found: list[NotDeployed] = []
    for report_row in reports:
        due = report_row.reported_at + DEPLOY_GRACE
        endpoint = ctx.session.get(Endpoint, report_row.endpoint_id)
        if ctx.now < due or endpoint is None or endpoint.last_scan_at is None or endpoint.last_scan_at < due:
            continue
        served = ctx.session.execute(
            select(AddressState.ip, Certificate.sha256)
            .outerjoin(Certificate, Certificate.id == AddressState.certificate_id)
            .where(AddressState.endpoint_id == report_row.endpoint_id)
        ).all()
        if not served or any(sha == report_row.sha256 for _, sha in served):
            continue
        assert report_row.sha256 is not None
        found.extend(
            NotDeployed(
                report_row.id,
                report_row.endpoint_id,
                ip,
                report_row.host,
                report_row.reported_at,
                report_row.sha256,
            )
            for ip, _ in served
            if ip
        )
    return found


@dataclass(frozen=True)
class ExpirationFacts(scans.ExpirationFacts):
    """The line API's `expiration` answer with the domain's last renewal report."""

    last_renewal: datetime | None = None
    last_renewal_status: str | None = None
    last_renewal_host: str | None = None


def expiration_facts(ctx: Ctx, raw_key: str, domain_text: str) -> ExpirationFacts:
    facts = scans.expiration_facts(ctx, raw_key, domain_text)
    endpoint = visibility.key_endpoint(ctx, raw_key, domain_text)
    last = last_renewals(ctx, [endpoint.id]).get(endpoint.id)
    base = {f.name: getattr(facts, f.name) for f in fields(facts)}
    if last is None:
        return ExpirationFacts(**base)
    return ExpirationFacts(
        **base, last_renewal=last.at, last_renewal_status=last.status, last_renewal_host=last.host
    )


def alert_facts(
    ctx: Ctx, endpoint_ids: list[int]
) -> tuple[list[renewal_rules.RenewalFailed], list[renewal_rules.NotDeployed]]:
    """What the alert pass decides renewal alerts from, for these endpoints."""
    failures = recent_failures(ctx, endpoint_ids)
    missing = not_deployed(ctx, endpoint_ids)
    wanted = {f.endpoint_id for f in failures} | {m.endpoint_id for m in missing}
    names = (
        {
            e.id: str(domains.DomainName(e.host, e.port))
            for e in ctx.session.scalars(select(Endpoint).where(Endpoint.id.in_(wanted)))
        }
        if wanted
        else {}
    )
    return (
        [
            renewal_rules.RenewalFailed(f.report_id, f.endpoint_id, names[f.endpoint_id], f.host, f.at)
            for f in failures
        ],
        [
            renewal_rules.NotDeployed(
                m.report_id, m.endpoint_id, names[m.endpoint_id], m.ip, m.host, m.at, m.sha256
            )
            for m in missing
        ],
    )


def last_report_id(ctx: Ctx) -> int:
    return ctx.session.scalar(select(func.max(RenewalReport.id))) or 0


def last_renewal_for_account(ctx: Ctx, account_id: int, endpoint_id: int) -> LastRenewal | None:
    """The dashboard's server page: the last report about a server the account sees."""
    if visibility.account_endpoint(ctx, account_id, endpoint_id) is None:
        raise errors.not_found("no such server")
    return last_renewals(ctx, [endpoint_id]).get(endpoint_id)
