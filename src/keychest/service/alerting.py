"""The database side of alerts: load what the scanner saw per account, apply the pure
decision (notify.alerts), and record + enqueue what it decides, in one transaction.

The ``alerts_sent`` rows and the outbox row are written together: either the account's mail
is queued and its alerts marked sent, or neither (a crash, or another mailer process winning
the unique key) and the next pass decides again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from keychest.notify import alerts as alert_rules
from keychest.notify import renewals as renewal_rules
from keychest.notify.facts import AddressFacts, CertChange, CertInfo, EndpointFacts
from keychest.scan.suffixes import registrable_domain
from keychest.service import domains, outbox, preferences, renewals, tokens, visibility
from keychest.service.context import Ctx
from keychest.service.holds import held_endpoints
from keychest.service.scans import stored_problems
from keychest.states import AccountState, Change
from keychest.store.models import (
    Account,
    AddressState,
    AlertSent,
    Certificate,
    Endpoint,
    ScanChange,
)

CHANGE_WINDOW = timedelta(days=8)


def _cert(row: Certificate) -> CertInfo:
    return CertInfo(
        row.id, row.sha256, row.issuer_name, row.not_before, row.not_after, row.is_lets_encrypt, row.subject
    )


def active_accounts(ctx: Ctx, *, email: str | None = None) -> list[Account]:
    query = select(Account).where(Account.state == AccountState.ACTIVE, Account.is_placeholder.is_(False))
    if email is not None:
        query = query.where(Account.email == email)
    return list(ctx.session.scalars(query.order_by(Account.id)))


def endpoint_facts(ctx: Ctx, endpoint_ids: list[int]) -> dict[int, EndpointFacts]:
    if not endpoint_ids:
        return {}
    rows_by_id = {e.id: e for e in ctx.session.scalars(select(Endpoint).where(Endpoint.id.in_(endpoint_ids)))}
    # When each failing address's current outage began: its latest change into an error.
    outage = {
        (endpoint_id, ip): at
        for endpoint_id, ip, at in ctx.session.execute(
            select(ScanChange.endpoint_id, ScanChange.ip, func.max(ScanChange.at))
            .where(
                ScanChange.endpoint_id.in_(endpoint_ids),
                or_(
                    ScanChange.change == Change.ERROR,
                    and_(ScanChange.change == Change.FIRST_SEEN, ScanChange.error_kind.is_not(None)),
                ),
            )
            .group_by(ScanChange.endpoint_id, ScanChange.ip)
        )
    }
    addresses: dict[int, list[AddressFacts]] = defaultdict(list)
    rows = ctx.session.execute(
        select(AddressState, Certificate)
        .outerjoin(Certificate, Certificate.id == AddressState.certificate_id)
        .where(AddressState.endpoint_id.in_(endpoint_ids))
        .order_by(AddressState.endpoint_id, AddressState.ip)
    )
    for state, cert in rows:
        failing = state.error_kind is not None
        addresses[state.endpoint_id].append(
            AddressFacts(
                ip=state.ip,
                state=state.state,
                certificate=_cert(cert) if cert is not None else None,
                error_kind=state.error_kind,
                error=state.error,
                error_since=outage.get((state.endpoint_id, state.ip), state.since) if failing else None,
                problems=tuple(p.code for p in stored_problems(state.problems)),
            )
        )
    return {
        endpoint_id: EndpointFacts(
            endpoint_id,
            str(domains.DomainName(row.host, row.port)),
            tuple(addresses.get(endpoint_id, ())),
            registrable_domain(row.host),
            row.registration_expires,
        )
        for endpoint_id, row in rows_by_id.items()
    }


def certificate_changes(ctx: Ctx, endpoint_ids: list[int], *, since_days: float = 8) -> list[CertChange]:
    """Each address's switches from one certificate to another in the last ``since_days``.

    Read from every history row carrying a certificate, not only ``new_certificate``: a server
    restarted with its renewed certificate between two scans shows up as error + recovered.
    """
    if not endpoint_ids:
        return []
    # Certificates live at most 398 days: looking further back finds no "previous" one.
    history = ctx.session.execute(
        select(ScanChange.id, ScanChange.endpoint_id, ScanChange.ip, ScanChange.at, ScanChange.certificate_id)
        .where(
            ScanChange.endpoint_id.in_(endpoint_ids),
            ScanChange.certificate_id.is_not(None),
            ScanChange.at >= ctx.now - timedelta(days=400),
        )
        .order_by(ScanChange.id)
    ).all()
    window_start = ctx.now - timedelta(days=since_days)
    previous: dict[tuple[int, str], int] = {}
    switches = []
    for change_id, endpoint_id, ip, at, cert_id in history:
        assert cert_id is not None  # by the query
        before = previous.get((endpoint_id, ip))
        previous[(endpoint_id, ip)] = cert_id
        if before is not None and before != cert_id and at >= window_start:
            switches.append((change_id, endpoint_id, ip, at, before, cert_id))
    if not switches:
        return []
    cert_ids = {c for s in switches for c in (s[4], s[5])}
    certs = {
        c.id: _cert(c) for c in ctx.session.scalars(select(Certificate).where(Certificate.id.in_(cert_ids)))
    }
    names = {
        e.id: str(domains.DomainName(e.host, e.port))
        for e in ctx.session.scalars(select(Endpoint).where(Endpoint.id.in_({s[1] for s in switches})))
    }
    return [
        CertChange(change_id, endpoint_id, names.get(endpoint_id, "?"), ip, at, certs.get(old), certs[new])
        for change_id, endpoint_id, ip, at, old, new in switches
        if new in certs
    ]


def sent_keys(ctx: Ctx, account_id: int) -> frozenset[str]:
    return frozenset(
        ctx.session.scalars(select(AlertSent.alert_key).where(AlertSent.account_id == account_id))
    )


def record_sent(ctx: Ctx, account_id: int, keys: list[tuple[str, str]]) -> bool:
    """Mark keys sent; False (and nothing written) when another process marked one first."""
    try:
        with ctx.session.begin_nested():
            ctx.session.execute(
                insert(AlertSent),
                [
                    {"account_id": account_id, "alert_key": k, "kind": kind, "sent_at": ctx.now}
                    for k, kind in keys
                ],
            )
    except IntegrityError:
        return False
    return True


def renotify_before(ctx: Ctx) -> datetime | None:
    """Incidents (mailed or sent to a channel) last told before this are due again (None:
    --renotify 0, never)."""
    renotify = ctx.settings.notify.renotify_s
    return ctx.now - timedelta(seconds=renotify) if renotify > 0 else None


def due_again(ctx: Ctx, account_ids: list[int]) -> dict[int, frozenset[str]]:
    """Each account's mailed incidents due to be mailed again: critical, not acknowledged, last
    mailed --renotify ago or longer (whether still true is for the pure decision). One query
    for all accounts: the pass runs every minute, and a query per account made the quiet pass
    1.4 times as slow (bench/alerts.py)."""
    before = renotify_before(ctx)
    if before is None or not account_ids:
        return {}
    due: dict[int, set[str]] = defaultdict(set)
    for account_id, key in ctx.session.execute(
        select(AlertSent.account_id, AlertSent.alert_key).where(
            AlertSent.account_id.in_(account_ids),
            AlertSent.kind.in_(alert_rules.INCIDENT_KINDS),
            AlertSent.severity == "critical",
            AlertSent.acked_at.is_(None),
            AlertSent.last_sent_at <= before,
        )
    ):
        due[account_id].add(key)
    return {account_id: frozenset(keys) for account_id, keys in due.items()}


class _Lost(Exception):
    """Another mailer process repeated the incident first."""


def record_alerts(ctx: Ctx, account_id: int, found: list[alert_rules.Alert]) -> dict[str, str] | None:
    """Mark the alerts mailed, with a fresh acknowledge link per incident; the link of each
    incident by key, or None (and nothing written) when another process was first."""
    links = {a.key: tokens.ack_link(ctx) for a in found if a.kind in alert_rules.INCIDENT_KINDS}
    rows = []
    for alert in found:
        if alert.repeat:
            continue
        link = links.get(alert.key)
        for key in (alert.key, *alert.covers):
            mine = key == alert.key and link is not None
            rows.append(
                {
                    "account_id": account_id,
                    "alert_key": key,
                    "kind": alert.kind,
                    "sent_at": ctx.now,
                    "severity": alert.severity if mine else None,
                    "endpoint_id": alert.endpoint_id if mine else None,
                    "ip": alert.ip if mine else None,
                    "last_sent_at": ctx.now if mine else None,
                    "ack_hash": link.hash if mine and link is not None else None,
                }
            )
    before = renotify_before(ctx) or ctx.now
    try:
        with ctx.session.begin_nested():
            if rows:
                ctx.session.execute(insert(AlertSent), rows)
            for alert in found:
                if not alert.repeat:
                    continue
                # Conditional, so two mailer processes cannot both repeat it.
                done = ctx.session.execute(
                    update(AlertSent)
                    .where(
                        AlertSent.account_id == account_id,
                        AlertSent.alert_key == alert.key,
                        AlertSent.acked_at.is_(None),
                        AlertSent.last_sent_at <= before,
                    )
                    .values(last_sent_at=ctx.now, ack_hash=links[alert.key].hash)
                    # The pass loads no AlertSent objects: without this, every update walks all
                    # it did load (the repeat pass took 3 times as long as the first).
                    .execution_options(synchronize_session=False)
                )
                if cast("CursorResult[Any]", done).rowcount != 1:
                    raise _Lost
    except (IntegrityError, _Lost):
        return None
    return {key: link.url for key, link in links.items()}


@dataclass(frozen=True)
class PassResult:
    accounts: int
    mails: int
    alerts: int


def run_pass(ctx: Ctx) -> PassResult:
    """One alert pass over every confirmed account with alerts on."""
    accounts = active_accounts(ctx)
    prefs = preferences.get_many(ctx, [a.id for a in accounts])
    accounts = [a for a in accounts if prefs[a.id].alerts_enabled]
    mapping = visibility.endpoints_by_account(ctx, [a.id for a in accounts])
    all_ids = sorted({e for ids in mapping.values() for e in ids})
    facts = endpoint_facts(ctx, all_ids)
    changes = certificate_changes(ctx, all_ids)
    renewal_failures, undeployed = renewals.alert_facts(ctx, all_ids)
    held = held_endpoints(ctx, all_ids)
    due = due_again(ctx, [a.id for a in accounts])
    mails = total = 0
    for account in accounts:
        ids = mapping.get(account.id, [])
        if not ids:
            continue
        # A held server (snooze, maintenance window) is left out: its alerts wait, its open
        # incidents stay open, and what is still true when the hold ends is mailed then.
        ids = [i for i in ids if i not in held]
        mine = set(ids)
        pref = prefs[account.id]
        sent = sent_keys(ctx, account.id)
        found = alert_rules.decide(
            [facts[i] for i in ids if i in facts],
            [c for c in changes if c.endpoint_id in mine],
            ctx.now,
            sent,
            alert_rules.Policy(
                thresholds_days=pref.expiry_thresholds,
                down_grace=timedelta(minutes=pref.down_grace_minutes),
                warn_days=ctx.settings.scan.warn_days,
                crit_days=ctx.settings.scan.crit_days,
            ),
            due.get(account.id, frozenset()),
        )
        found += renewal_rules.decide(
            [f for f in renewal_failures if f.endpoint_id in mine],
            [u for u in undeployed if u.endpoint_id in mine],
            sent,
        )
        if not found:
            continue
        ack_urls = record_alerts(ctx, account.id, found)
        if ack_urls is None:
            continue
        outbox.enqueue(
            ctx,
            kind="alerts",
            to_addr=preferences.recipient(account, pref),
            account_id=account.id,
            payload={
                "alerts": [a.as_dict() | {"ack_url": ack_urls.get(a.key)} for a in found],
                "subject": alert_rules.subject(found),
            },
        )
        mails += 1
        total += len(found)
    return PassResult(len(accounts), mails, total)


def activity_marker(ctx: Ctx) -> tuple[int, int]:
    """Changes worth an early alert pass: new scan history rows, newly confirmed accounts."""
    last_change = ctx.session.scalar(select(func.max(ScanChange.id))) or 0
    # A renewal report (a failure to alert at once) counts as activity too: both ids only grow,
    # so their sum changes whenever either table gains a row.
    last_change += renewals.last_report_id(ctx)
    active = (
        ctx.session.scalar(
            select(func.count()).select_from(Account).where(Account.state == AccountState.ACTIVE)
        )
        or 0
    )
    return last_change, active
