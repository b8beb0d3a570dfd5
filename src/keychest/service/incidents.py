"""The channel pass: what each alert channel must be told now, recorded and queued at once.

For every channel (server-wide: every endpoint; an account's: the endpoints it sees), the
scanner's facts go through the pure decision (notify.events); the ``channel_events`` rows
(incidents while open) and the outbox rows are written in one transaction, so an event is
queued once per channel whatever rescans, restarts or parallel passes happen (the unique
(channel, key) pair turns a race into a rolled-back savepoint and a later pass).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from keychest.notify import alerts as alert_rules
from keychest.notify import events as rules
from keychest.notify import payload as payloads
from keychest.notify import renewals as renewal_rules
from keychest.notify.alerts import Policy
from keychest.service import alerting, channels, domains, errors, keys, outbox, renewals, tokens, visibility
from keychest.service.context import Ctx
from keychest.service.holds import held_endpoints
from keychest.store.models import Account, AlertSent, Channel, ChannelEvent, Endpoint, NotifyHold


@dataclass(frozen=True)
class PassResult:
    channels: int
    queued: int


def _open(ctx: Ctx, channel_id: int) -> tuple[frozenset[str], dict[str, rules.OpenIncident], frozenset[str]]:
    """What the channel got, its open incidents, and those due to be sent again."""
    due_before = alerting.renotify_before(ctx)
    sent: set[str] = set()
    open_: dict[str, rules.OpenIncident] = {}
    repeat: set[str] = set()
    for key, type_, endpoint_id, ip, severity, closed_at, last_sent_at, acked_at in ctx.session.execute(
        select(
            ChannelEvent.event_key,
            ChannelEvent.type,
            ChannelEvent.endpoint_id,
            ChannelEvent.ip,
            ChannelEvent.severity,
            ChannelEvent.closed_at,
            ChannelEvent.last_sent_at,
            ChannelEvent.acked_at,
        ).where(ChannelEvent.channel_id == channel_id)
    ):
        sent.add(key)
        if closed_at is None and type_ in rules.CLOSES:
            open_[key] = rules.OpenIncident(key, type_, endpoint_id, ip)
            if (
                due_before is not None
                and severity == "critical"
                and acked_at is None
                and last_sent_at is not None
                and last_sent_at <= due_before
            ):
                repeat.add(key)
    return frozenset(sent), open_, frozenset(repeat)


def _record(ctx: Ctx, channel: Channel, decision: rules.Decision, acks: dict[str, str]) -> bool:
    """Write the channel's events and close its incidents; False when another pass won.
    ``acks``: event key -> the hash of its new ack token (incidents only)."""
    rows = [
        {
            "channel_id": channel.id,
            "event_key": e.key,
            "type": e.type,
            "endpoint_id": e.endpoint_id,
            "ip": e.ip,
            "severity": e.severity,
            "opened_at": ctx.now,
            # Only incidents stay open; every other event is over once sent.
            "closed_at": None if e.type in rules.CLOSES else ctx.now,
            "last_sent_at": ctx.now,
            "ack_hash": acks.get(e.key),
        }
        for e in decision.events
        if not e.repeat
    ]
    closing = [e.closes for e in decision.events if e.closes] + decision.closed_quietly
    try:
        with ctx.session.begin_nested():
            if rows:
                ctx.session.execute(insert(ChannelEvent), rows)
            for e in decision.events:
                if e.repeat:
                    ctx.session.execute(
                        update(ChannelEvent)
                        .where(ChannelEvent.channel_id == channel.id, ChannelEvent.event_key == e.key)
                        .values(last_sent_at=ctx.now, ack_hash=acks.get(e.key))
                        # Nothing here loads ChannelEvent objects: skip walking the session.
                        .execution_options(synchronize_session=False)
                    )
            if closing:
                ctx.session.execute(
                    update(ChannelEvent)
                    .where(
                        ChannelEvent.channel_id == channel.id,
                        ChannelEvent.event_key.in_(closing),
                        ChannelEvent.closed_at.is_(None),
                    )
                    .values(closed_at=ctx.now)
                    .execution_options(synchronize_session=False)
                )
    except IntegrityError:
        return False
    return True


def run_pass(ctx: Ctx) -> PassResult:
    """One pass over every live channel; the number of notifications queued."""
    server_ids = channels.ensure_server(ctx)
    live = list(
        ctx.session.scalars(select(Channel).where(Channel.state != channels.REMOVED).order_by(Channel.id))
    )
    if not live:
        return PassResult(0, 0)
    account_ids = [c.account_id for c in live if c.account_id is not None]
    by_account = visibility.endpoints_by_account(ctx, account_ids)
    all_ids = (
        list(ctx.session.scalars(select(Endpoint.id).order_by(Endpoint.id)))
        if server_ids
        else sorted({e for ids in by_account.values() for e in ids})
    )
    facts = alerting.endpoint_facts(ctx, all_ids)
    changes = alerting.certificate_changes(ctx, all_ids)
    renewal_events = renewal_rules.channel_events(*renewals.alert_facts(ctx, all_ids))
    where = {
        e.id: (e.host, e.port) for e in ctx.session.scalars(select(Endpoint).where(Endpoint.id.in_(all_ids)))
    }
    emails = {a.id: a.email for a in ctx.session.scalars(select(Account).where(Account.id.in_(account_ids)))}
    held = held_endpoints(ctx, all_ids)
    policy = Policy(warn_days=ctx.settings.scan.warn_days, crit_days=ctx.settings.scan.crit_days)
    dashboard_url = ctx.settings.mail.public_url + "/"
    queued = 0
    for channel in live:
        ids = all_ids if channel.account_id is None else by_account.get(channel.account_id, [])
        # A held server is left out: its events wait, its open incidents stay as they are.
        ids = [i for i in ids if i not in held]
        mine = set(ids)
        sent, open_, repeat = _open(ctx, channel.id)
        open_ = {k: o for k, o in open_.items() if o.endpoint_id not in held}
        wants = rules.Filter(channel.min_severity, frozenset(channel.event_types or ()))
        decision = rules.decide(
            [facts[i] for i in ids if i in facts],
            [c for c in changes if c.endpoint_id in mine],
            ctx.now,
            sent,
            open_,
            wants,
            policy,
            repeat,
        )
        # Renewal reports are events once per report (and address), never incidents.
        reported = [
            e for e in renewal_events if e.endpoint_id in mine and e.key not in sent and wants.wants(e)
        ]
        decision = replace(decision, events=decision.events + reported)
        if not decision.events and not decision.closed_quietly:
            continue
        acks = {e.key: tokens.ack_link(ctx) for e in decision.events if e.type in rules.CLOSES}
        if not _record(ctx, channel, decision, {k: a.hash for k, a in acks.items()}):
            continue
        account = (
            payloads.AccountRef(channel.account_id, emails.get(channel.account_id, ""))
            if channel.account_id is not None
            else None
        )
        for event in decision.events:
            host, port = where.get(event.endpoint_id or 0, (event.endpoint, 443))
            body = payloads.build(
                event,
                msg_id=f"msg_{uuid.uuid4().hex}",
                occurred_at=ctx.now,
                now=ctx.now,
                host=host,
                port=port,
                account=account,
                dashboard_url=dashboard_url,
                ack_url=acks[event.key].url if event.key in acks else None,
            )
            outbox.enqueue_notification(
                ctx,
                channel_id=channel.id,
                to_label=channels.label(channel.url),
                account_id=channel.account_id,
                payload=body,
            )
            queued += 1
    return PassResult(len(live), queued)


# --- acknowledge (the ack_url of an incident's notification) ----------------------------------


@dataclass(frozen=True)
class AckView:
    type: str
    endpoint: str  # host[:port] at ip
    severity: str
    opened_at: str
    acked: bool
    open: bool


def _by_token(ctx: Ctx, raw: str) -> ChannelEvent | AlertSent:
    """A channel's incident or a mailed one: the hash is unique in each table."""
    hashed = tokens.hash_token(raw)
    row: ChannelEvent | AlertSent | None = ctx.session.scalar(
        select(ChannelEvent).where(ChannelEvent.ack_hash == hashed)
    )
    if row is None:
        row = ctx.session.scalar(select(AlertSent).where(AlertSent.ack_hash == hashed))
    if row is None:
        raise errors.not_found("this link was used already, or replaced by a newer notification")
    return row


def _ack_view(ctx: Ctx, row: ChannelEvent | AlertSent) -> AckView:
    endpoint = ctx.session.get(Endpoint, row.endpoint_id) if row.endpoint_id is not None else None
    where = f"{endpoint.host}:{endpoint.port}" if endpoint is not None else "?"
    if row.ip:
        where += f" at {row.ip}"
    if isinstance(row, ChannelEvent):
        type_, opened_at, is_open = row.type, row.opened_at, row.closed_at is None
    else:
        type_, opened_at = rules.MAIL_INCIDENTS.get(row.kind, row.kind), row.sent_at
        is_open = alert_rules.is_open(row.alert_key, row.kind, alerting.sent_keys(ctx, row.account_id))
    return AckView(
        type_,
        where,
        row.severity or "?",
        f"{opened_at:%Y-%m-%d %H:%M} UTC",
        row.acked_at is not None,
        is_open,
    )


def ack_info(ctx: Ctx, raw: str) -> AckView:
    """What the link would acknowledge (GET shows it; only POST acts)."""
    return _ack_view(ctx, _by_token(ctx, raw))


def acknowledge(ctx: Ctx, raw: str) -> AckView:
    """Stop repeating this incident until it changes or gets worse. The token is used up."""
    row = _by_token(ctx, raw)
    row.acked_at, row.ack_hash = ctx.now, None
    return _ack_view(ctx, row)


# --- snooze and maintenance windows ---------------------------------------------------------

SNOOZE = "snooze"
MAINTENANCE = "maintenance"
MAX_WINDOW = timedelta(days=7)  # a weekly window shorter than the week
MAX_SNOOZE_DAYS = 365


@dataclass(frozen=True)
class HoldView:
    id: int
    domain: str
    kind: str
    starts_at: datetime
    ends_at: datetime
    weekly: bool
    active: bool


def _hold_view(ctx: Ctx, row: NotifyHold) -> HoldView:
    endpoint = ctx.session.get(Endpoint, row.endpoint_id)
    name = str(domains.DomainName(endpoint.host, endpoint.port)) if endpoint is not None else "?"
    active = rules.Hold(row.starts_at, row.ends_at, row.weekly).active(ctx.now)
    return HoldView(row.id, name, row.kind, row.starts_at, row.ends_at, row.weekly, active)


def _add_hold(
    ctx: Ctx, raw_key: str, domain: str, kind: str, starts_at: datetime, ends_at: datetime, weekly: bool
) -> HoldView:
    endpoint = visibility.key_endpoint(ctx, raw_key, domain)
    key = keys.use(ctx, raw_key)
    return _store_hold(ctx, endpoint.id, key.account_id, kind, starts_at, ends_at, weekly)


def _store_hold(
    ctx: Ctx,
    endpoint_id: int,
    account_id: int | None,
    kind: str,
    starts_at: datetime,
    ends_at: datetime,
    weekly: bool,
) -> HoldView:
    row = NotifyHold(
        endpoint_id=endpoint_id,
        account_id=account_id,
        kind=kind,
        starts_at=starts_at,
        ends_at=ends_at,
        weekly=weekly,
        created_at=ctx.now,
    )
    ctx.session.add(row)
    ctx.session.flush()
    return _hold_view(ctx, row)


def _check_snooze(days: float) -> None:
    if not 0 < days <= MAX_SNOOZE_DAYS:
        raise errors.invalid(f"days must be more than 0 and at most {MAX_SNOOZE_DAYS}")


def _check_window(ctx: Ctx, starts_at: datetime, ends_at: datetime, weekly: bool) -> None:
    if ends_at <= starts_at:
        raise errors.invalid("the window must end after it starts")
    if weekly and ends_at - starts_at >= MAX_WINDOW:
        raise errors.invalid("a weekly window must be shorter than a week")
    if not weekly and ends_at <= ctx.now:
        raise errors.invalid("the window is over already")


def snooze(ctx: Ctx, raw_key: str, domain: str, days: float) -> HoldView:
    """Hold a server's alerts for ``days`` from now."""
    _check_snooze(days)
    return _add_hold(ctx, raw_key, domain, SNOOZE, ctx.now, ctx.now + timedelta(days=days), False)


def maintenance(
    ctx: Ctx, raw_key: str, domain: str, starts_at: datetime, ends_at: datetime, *, weekly: bool
) -> HoldView:
    _check_window(ctx, starts_at, ends_at, weekly)
    return _add_hold(ctx, raw_key, domain, MAINTENANCE, starts_at, ends_at, weekly)


# --- the same for the dashboard: a signed-in account and a server id ----------------------------


def _account_endpoint(ctx: Ctx, account_id: int, endpoint_id: int) -> Endpoint:
    endpoint = visibility.account_endpoint(ctx, account_id, endpoint_id)
    if endpoint is None:
        raise errors.not_found("no such server")
    return endpoint


def snooze_server(ctx: Ctx, account_id: int, endpoint_id: int, days: float) -> HoldView:
    _check_snooze(days)
    endpoint = _account_endpoint(ctx, account_id, endpoint_id)
    until = ctx.now + timedelta(days=days)
    return _store_hold(ctx, endpoint.id, account_id, SNOOZE, ctx.now, until, False)


def maintenance_server(
    ctx: Ctx, account_id: int, endpoint_id: int, starts_at: datetime, ends_at: datetime, *, weekly: bool
) -> HoldView:
    _check_window(ctx, starts_at, ends_at, weekly)
    endpoint = _account_endpoint(ctx, account_id, endpoint_id)
    return _store_hold(ctx, endpoint.id, account_id, MAINTENANCE, starts_at, ends_at, weekly)


def server_holds(ctx: Ctx, account_id: int, endpoint_id: int) -> list[HoldView]:
    """The server's snoozes and windows that are not over."""
    endpoint = _account_endpoint(ctx, account_id, endpoint_id)
    rows = ctx.session.scalars(
        select(NotifyHold).where(NotifyHold.endpoint_id == endpoint.id).order_by(NotifyHold.id)
    )
    return [_hold_view(ctx, row) for row in rows if row.weekly or row.ends_at > ctx.now]


def remove_server_hold(ctx: Ctx, account_id: int, endpoint_id: int, hold_id: int) -> None:
    endpoint = _account_endpoint(ctx, account_id, endpoint_id)
    row = ctx.session.get(NotifyHold, hold_id)
    if row is None or row.endpoint_id != endpoint.id:
        raise errors.not_found("no such snooze or maintenance window")
    ctx.session.delete(row)


def _key_holds(ctx: Ctx, raw_key: str) -> list[NotifyHold]:
    key = keys.use(ctx, raw_key)
    return list(
        ctx.session.scalars(
            select(NotifyHold)
            .where(NotifyHold.endpoint_id.in_(visibility.key_endpoints(key)))
            .order_by(NotifyHold.id)
        )
    )


def holds(ctx: Ctx, raw_key: str) -> list[HoldView]:
    """The snoozes and windows of the servers the key sees (over ones left out)."""
    return [_hold_view(ctx, row) for row in _key_holds(ctx, raw_key) if row.weekly or row.ends_at > ctx.now]


def remove_hold(ctx: Ctx, raw_key: str, hold_id: int) -> None:
    for row in _key_holds(ctx, raw_key):
        if row.id == hold_id:
            ctx.session.delete(row)
            return
    raise errors.not_found("no such snooze or maintenance window")


# --- open incidents, listed and acknowledged from the dashboard and REST -------------------------


@dataclass(frozen=True)
class IncidentView:
    """One open incident of a server's address, as mail and the account's channels were told."""

    type: str  # certificate.invalid, endpoint.failing
    endpoint_id: int
    domain: str  # host[:port]
    ip: str | None
    severity: str
    opened_at: datetime
    acknowledged: bool
    told: tuple[str, ...]  # "mail" and the (redacted) URLs of the channels that got it


@dataclass
class _Open:
    type: str
    endpoint_id: int
    ip: str | None
    severity: str
    opened_at: datetime
    acked: bool
    told: str
    row: ChannelEvent | AlertSent


def _account_open(ctx: Ctx, account_id: int, endpoint_ids: set[int]) -> list[_Open]:
    """The open incidents of the account's mail and channels on these servers."""
    found: list[_Open] = []
    sent = alerting.sent_keys(ctx, account_id)
    for row in ctx.session.scalars(
        select(AlertSent).where(
            AlertSent.account_id == account_id,
            AlertSent.kind.in_(alert_rules.INCIDENT_KINDS),
            AlertSent.endpoint_id.is_not(None),
        )
    ):
        if row.endpoint_id in endpoint_ids and alert_rules.is_open(row.alert_key, row.kind, sent):
            found.append(
                _Open(
                    rules.MAIL_INCIDENTS[row.kind], row.endpoint_id, row.ip, row.severity or "warning",
                    row.sent_at, row.acked_at is not None, "mail", row,
                )
            )  # fmt: skip
    for event, channel in ctx.session.execute(
        select(ChannelEvent, Channel)
        .join(Channel, Channel.id == ChannelEvent.channel_id)
        .where(
            Channel.account_id == account_id,
            Channel.state != channels.REMOVED,
            ChannelEvent.closed_at.is_(None),
            ChannelEvent.type.in_(rules.CLOSES),
        )
    ):
        if event.endpoint_id is not None and event.endpoint_id in endpoint_ids:
            found.append(
                _Open(
                    event.type, event.endpoint_id, event.ip, event.severity, event.opened_at,
                    event.acked_at is not None, channels.label(channel.url), event,
                )
            )  # fmt: skip
    return found


def _views(ctx: Ctx, found: list[_Open]) -> list[IncidentView]:
    """One view per address and type: mail and every channel were told of the same incident.
    Its severity is the latest one told; it is acknowledged once every copy is."""
    groups: dict[tuple[str, int, str | None], list[_Open]] = {}
    for item in found:
        groups.setdefault((item.type, item.endpoint_id, item.ip), []).append(item)
    names = {
        e.id: str(domains.DomainName(e.host, e.port))
        for e in ctx.session.scalars(select(Endpoint).where(Endpoint.id.in_({g[1] for g in groups})))
    }
    views = []
    for (type_, endpoint_id, ip), items in groups.items():
        latest = max(items, key=lambda i: i.opened_at)
        told = tuple(sorted({i.told for i in items}))
        views.append(
            IncidentView(
                type_, endpoint_id, names.get(endpoint_id, "?"), ip, latest.severity,
                min(i.opened_at for i in items), all(i.acked for i in items), told,
            )
        )  # fmt: skip
    views.sort(key=lambda v: (v.domain, v.ip or "", v.type))
    return views


def _acknowledge_all(ctx: Ctx, found: list[_Open]) -> int:
    """Acknowledge every copy; the number of incidents (views) that were not acknowledged yet."""
    fresh = len([v for v in _views(ctx, found) if not v.acknowledged])
    for item in found:
        if not item.acked:
            item.row.acked_at, item.row.ack_hash = ctx.now, None
    return fresh


def server_incidents(ctx: Ctx, account_id: int, endpoint_id: int) -> list[IncidentView]:
    endpoint = _account_endpoint(ctx, account_id, endpoint_id)
    return _views(ctx, _account_open(ctx, account_id, {endpoint.id}))


def acknowledge_server(ctx: Ctx, account_id: int, endpoint_id: int) -> int:
    """Stop repeating the server's open incidents (mail and the account's channels) until they
    change or get worse; the number newly acknowledged."""
    endpoint = _account_endpoint(ctx, account_id, endpoint_id)
    return _acknowledge_all(ctx, _account_open(ctx, account_id, {endpoint.id}))


def key_incidents(ctx: Ctx, raw_key: str) -> list[IncidentView]:
    """The open incidents of the servers the key sees, as its account was told of them."""
    key = keys.use(ctx, raw_key)
    if key.account_id is None:
        return []
    seen = set(ctx.session.scalars(visibility.key_endpoints(key)))
    return _views(ctx, _account_open(ctx, key.account_id, seen))


def acknowledge_for_key(ctx: Ctx, raw_key: str, domain: str) -> int:
    endpoint = visibility.key_endpoint(ctx, raw_key, domain)
    key = keys.use(ctx, raw_key)
    if key.account_id is None:
        return 0
    return _acknowledge_all(ctx, _account_open(ctx, key.account_id, {endpoint.id}))
