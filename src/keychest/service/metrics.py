"""What the observability routes read: the latest scan result per address, and a liveness probe.

``web/metrics.py`` turns :class:`AddressMetric` rows into Prometheus gauges at scrape time;
``/healthz`` calls :func:`database_ok`. Both are reads, through ``Keychest.read``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, or_, select, text

from keychest.scan.judge import State
from keychest.scan.suffixes import registrable_domain
from keychest.service.context import Ctx
from keychest.service.scans import database_now
from keychest.states import MailState
from keychest.store.models import AddressState, Certificate, Endpoint, OutboxMail


@dataclass(frozen=True)
class AddressMetric:
    host: str
    port: int
    ip: str
    error_kind: str | None
    trusted: bool | None
    hostname_ok: bool | None
    scan_seconds: float | None
    last_scan_at: datetime
    not_after: datetime | None


def address_metrics(ctx: Ctx, *, everything: bool = True) -> list[AddressMetric]:
    """The addresses' latest scans, sorted by host, port and address (one query).

    Unless ``everything``, only those worth a per-address series: not ok, or a certificate
    within the warning threshold (--warn-days). At a million endpoints the full list is
    hundreds of megabytes per scrape; the aggregates (:func:`metric_aggregates`) cover the rest.
    """
    query = (
        select(
            Endpoint.host,
            Endpoint.port,
            AddressState.ip,
            AddressState.error_kind,
            AddressState.trusted,
            AddressState.hostname_ok,
            AddressState.scan_seconds,
            AddressState.last_scan_at,
            Certificate.not_after,
        )
        .join(Endpoint, Endpoint.id == AddressState.endpoint_id)
        .outerjoin(Certificate, Certificate.id == AddressState.certificate_id)
        .order_by(Endpoint.host, Endpoint.port, AddressState.ip)
    )
    if not everything:
        soon = ctx.now + timedelta(days=ctx.settings.scan.warn_days)
        query = query.where(or_(AddressState.state != State.OK, Certificate.not_after <= soon))
    rows = ctx.session.execute(query).all()
    return [
        AddressMetric(
            host=row.host,
            port=row.port,
            ip=row.ip,
            error_kind=row.error_kind,
            trusted=row.trusted,
            hostname_ok=row.hostname_ok,
            scan_seconds=None if row.scan_seconds is None else float(row.scan_seconds),
            last_scan_at=row.last_scan_at,
            not_after=row.not_after,
        )
        for row in rows
    ]


def registration_expiries(ctx: Ctx, *, everything: bool = True) -> dict[str, datetime]:
    """Registrable domain -> its registration expiry (RDAP) as the last scans saw it.

    Unless ``everything``, only the domains within the warning threshold (--warn-days), as
    for the per-address gauges: one series per domain, and only those worth looking at.
    """
    query = (
        select(Endpoint.host, Endpoint.registration_expires)
        .where(Endpoint.registration_expires.is_not(None))
        .distinct()
    )
    if not everything:
        soon = ctx.now + timedelta(days=ctx.settings.scan.warn_days)
        query = query.where(Endpoint.registration_expires <= soon)
    found: dict[str, datetime] = {}
    for host, expires in ctx.session.execute(query):
        domain = registrable_domain(host)
        if expires is None or domain is None:  # filtered out by the query; for the types
            continue
        if domain not in found or expires < found[domain]:
            found[domain] = expires
    return dict(sorted(found.items()))


# Upper bounds (days left) of the certificate buckets; the last bucket is "more".
DAYS_LEFT_BUCKETS = (7, 14, 30, 60, 90)


@dataclass(frozen=True)
class MetricAggregates:
    endpoints_by_state: dict[str, int]  # ok, warning, critical, error, unscanned
    # Served leaf certificates by days left: "expired", "lt7", ..., "lt90", "more".
    certificates_by_days_left: dict[str, int]
    earliest_expiry: datetime | None  # the soonest not-after any address serves
    addresses: int


def metric_aggregates(ctx: Ctx) -> MetricAggregates:
    """What /metrics reports whatever the number of endpoints: a few grouped counts."""
    by_state = {str(state): 0 for state in State}
    by_state["unscanned"] = 0
    for state, count in ctx.session.execute(
        select(Endpoint.last_state, func.count()).group_by(Endpoint.last_state)
    ):
        by_state[str(state) if state is not None else "unscanned"] = int(count)
    now = ctx.now
    bucket = case(
        (Certificate.not_after < now, "expired"),
        *((Certificate.not_after < now + timedelta(days=d), f"lt{d}") for d in DAYS_LEFT_BUCKETS),
        else_="more",
    )
    buckets = {"expired": 0, **{f"lt{d}": 0 for d in DAYS_LEFT_BUCKETS}, "more": 0}
    served = select(AddressState.certificate_id).where(AddressState.certificate_id.is_not(None)).distinct()
    for name, count in ctx.session.execute(
        select(bucket, func.count()).where(Certificate.id.in_(served)).group_by(bucket)
    ):
        buckets[str(name)] = int(count)
    # Over the whole verified path (blackbox_exporter's convention): an intermediate that
    # expires before the leaf counts; rows scanned before it was stored fall back to the leaf.
    earliest = ctx.session.scalar(
        select(func.min(func.coalesce(AddressState.earliest_not_after, Certificate.not_after)))
        .select_from(Certificate)
        .join(AddressState, AddressState.certificate_id == Certificate.id)
    )
    addresses = ctx.session.scalar(select(func.count()).select_from(AddressState)) or 0
    return MetricAggregates(by_state, buckets, earliest, int(addresses))


@dataclass(frozen=True)
class OutboxDepth:
    by_state: dict[str, int]  # queued, sending, failed (sent and skipped are history)
    oldest_queued_age_s: float | None  # None: nothing waiting
    # (channel, state) -> rows, every state: "mail" or "channel <id>"; --retention bounds it
    by_channel: dict[tuple[str, str], int]


def outbox_depth(ctx: Ctx) -> OutboxDepth:
    """What waits in the outbox (mails and channel notifications), for a mailer's /metrics."""
    waiting = [MailState.QUEUED, MailState.SENDING, MailState.FAILED]
    by_state = {str(state): 0 for state in waiting}
    for state, count in ctx.session.execute(
        select(OutboxMail.state, func.count()).where(OutboxMail.state.in_(waiting)).group_by(OutboxMail.state)
    ):
        by_state[str(state)] = int(count)
    oldest = ctx.session.scalar(
        select(func.min(OutboxMail.created_at)).where(OutboxMail.state == MailState.QUEUED)
    )
    age = None if oldest is None else max(0.0, (database_now(ctx) - oldest).total_seconds())
    by_channel: dict[tuple[str, str], int] = {}
    for channel_id, state, count in ctx.session.execute(
        select(OutboxMail.channel_id, OutboxMail.state, func.count()).group_by(
            OutboxMail.channel_id, OutboxMail.state
        )
    ):
        channel = "mail" if channel_id is None else f"channel {channel_id}"
        by_channel[(channel, str(state))] = int(count)
    return OutboxDepth(by_state, age, by_channel)


def database_ok(ctx: Ctx) -> bool:
    """True once the database answered a trivial query (a failure raises from the driver)."""
    return ctx.session.execute(text("SELECT 1")).scalar() == 1
