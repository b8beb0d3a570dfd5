"""Scan results: what is due, storing what the scanner saw, history, and reading it back.

The scanner itself (``keychest.scan``) knows nothing of the database; the scheduler leases
due endpoints here, scans them, and hands the results back to :func:`record`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, CursorResult, Select, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from keychest.scan.ari import AriPhase, RenewalInfo, phase
from keychest.scan.judge import CertFacts, State
from keychest.scan.model import AddressResult
from keychest.scan.revocation import Method, Revocation, Status
from keychest.service import domains, errors, visibility
from keychest.service.bulk import chunks
from keychest.service.context import Ctx
from keychest.states import Change
from keychest.store.models import (
    AddressState,
    Certificate,
    Endpoint,
    ScanChange,
    ScanSettings,
)

STATE_ORDER = {State.OK: 0, State.WARNING: 1, State.CRITICAL: 2, State.ERROR: 3}
MAX_BACKOFF_FACTOR = 8


@dataclass(frozen=True)
class DueEndpoint:
    id: int
    host: str
    port: int
    protocol: str = "https"


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def database_now(ctx: Ctx) -> datetime:
    """The database's clock (UTC, naive), for due times and leases.

    Several scanners on several machines share the endpoints: with each process's own clock
    a node running fast would lease what is not yet due, and one whose skew passes the lease
    time would take endpoints another is still scanning. The database has one clock for all.
    """
    if not ctx.database_clock:
        return ctx.now
    if ctx.session.get_bind().dialect.name == "postgresql":
        value = ctx.session.scalar(text("SELECT timezone('UTC', now())"))
    else:  # SQLite: one machine, one clock; milliseconds like the rest of the stored times
        value = ctx.session.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return _naive(value)


def due_query(now: datetime, limit: int) -> Select[int, str, int, str]:
    """The endpoints due at ``now``, oldest first, rows other scanners hold skipped."""
    return (
        select(Endpoint.id, Endpoint.host, Endpoint.port, Endpoint.protocol)
        .where(Endpoint.next_scan_at <= now)
        .order_by(Endpoint.next_scan_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def lease_due(ctx: Ctx, *, owner: str, limit: int, lease_s: float) -> list[DueEndpoint]:
    """Claim up to ``limit`` endpoints that are due, for ``lease_s`` seconds.

    The lease moves next_scan_at forward, so the one index on next_scan_at answers both
    "what is due" and "whose lease ran out": an endpoint whose scanner died comes due again
    when its lease ends. On PostgreSQL, SKIP LOCKED lets many scanners lease side by side.
    """
    now = database_now(ctx)
    until = now + timedelta(seconds=lease_s)
    rows = ctx.session.execute(due_query(now, limit)).all()
    if not rows:
        return []
    ctx.session.execute(
        update(Endpoint)
        .where(Endpoint.id.in_([r.id for r in rows]))
        .values(lease_owner=owner, lease_until=until, next_scan_at=until)
    )
    return [DueEndpoint(r.id, r.host, r.port, r.protocol) for r in rows]


def release_leases(ctx: Ctx, owner: str, endpoint_ids: Sequence[int]) -> int:
    """Make endpoints ``owner`` still holds due again at once (a scanner stopping cleanly).

    By id (the primary key), not by owner: lease_owner has no index, and a stop should not
    read a million rows.
    """
    if not endpoint_ids:
        return 0
    result = ctx.session.execute(
        update(Endpoint)
        .where(Endpoint.id.in_(list(endpoint_ids)), Endpoint.lease_owner == owner)
        .values(lease_owner=None, lease_until=None, next_scan_at=database_now(ctx))
    )
    return int(result.rowcount or 0) if isinstance(result, CursorResult) else 0


def next_due_at(ctx: Ctx) -> datetime | None:
    return ctx.session.scalar(select(Endpoint.next_scan_at).order_by(Endpoint.next_scan_at).limit(1))


def _certificate_id(ctx: Ctx, facts: CertFacts, cache: dict[str, int]) -> int:
    if facts.sha256 in cache:
        return cache[facts.sha256]
    found = ctx.session.scalar(select(Certificate.id).where(Certificate.sha256 == facts.sha256))
    if found is None:
        values = {
            "sha256": facts.sha256,
            "subject": facts.subject,
            "issuer": facts.issuer,
            "issuer_name": facts.issuer_name[:300],
            "not_before": _naive(facts.not_before),
            "not_after": _naive(facts.not_after),
            "subject_alt_names": list(facts.subject_alt_names),
            "key_type": facts.key_type,
            "key_bits": facts.key_bits,
            "signature_algorithm": facts.signature_algorithm,
            "is_lets_encrypt": facts.is_lets_encrypt,
            "self_signed": facts.self_signed,
            "is_ca": facts.is_ca,
            "pem": facts.pem,
            "first_seen_at": ctx.now,
        }
        try:
            with ctx.session.begin_nested():
                found = ctx.session.execute(
                    insert(Certificate).values(**values).returning(Certificate.id)
                ).scalar_one()
        except IntegrityError:  # another scanner stored it first
            found = ctx.session.execute(
                select(Certificate.id).where(Certificate.sha256 == facts.sha256)
            ).scalar_one()
    cache[facts.sha256] = found
    return found


@dataclass(frozen=True)
class Recorded:
    endpoint_id: int
    state: State
    changes: tuple[Change, ...]


def _change(previous: AddressState | None, cert_id: int | None, error_kind: str | None) -> Change | None:
    """What kind of history row, if any, this observation makes."""
    if previous is None:
        return Change.FIRST_SEEN
    if error_kind is not None:
        if previous.error_kind is None:
            return Change.ERROR
        return Change.ERROR_CHANGED if previous.error_kind != error_kind else None
    if previous.error_kind is not None:
        return Change.RECOVERED
    return Change.NEW_CERTIFICATE if previous.certificate_id != cert_id else None


def _last_certificate(ctx: Ctx, endpoint_id: int, ip: str) -> int | None:
    return ctx.session.scalar(
        select(ScanChange.certificate_id)
        .where(
            ScanChange.endpoint_id == endpoint_id,
            ScanChange.ip == ip,
            ScanChange.certificate_id.is_not(None),
        )
        .order_by(ScanChange.id.desc())
        .limit(1)
    )


def record(
    ctx: Ctx,
    endpoint_id: int,
    results: Sequence[AddressResult],
    *,
    interval_s: float,
    jitter: float = 0.0,
    owner: str | None = None,
) -> Recorded:
    """Store one endpoint's scan: latest state per address, history on change, next due time.

    ``jitter`` is a fraction (e.g. -0.1..0.1) the caller draws, so this stays deterministic.
    """
    now = database_now(ctx)
    previous = {
        row.ip: row
        for row in ctx.session.scalars(select(AddressState).where(AddressState.endpoint_id == endpoint_id))
    }
    cache: dict[str, int] = {}
    changes: list[Change] = []
    worst = State.OK
    seen: set[str] = set()
    for result in results:
        ip = result.ip or ""
        seen.add(ip)
        chain_ids = [_certificate_id(ctx, facts, cache) for facts in result.chain]
        cert_id = chain_ids[0] if chain_ids else None
        error_kind = str(result.error.kind) if result.error is not None else None
        state = State(result.state)
        worst = state if STATE_ORDER[state] > STATE_ORDER[worst] else worst
        verdict = result.verdict
        old = previous.get(ip)
        # Read before the UPDATE below, which also refreshes `old` in the session.
        old_certificate_id = old.certificate_id if old is not None else None
        change = _change(old, cert_id, error_kind)
        values = {
            "state": state,
            "certificate_id": cert_id,
            "chain": [facts.sha256 for facts in result.chain],
            "error_kind": error_kind,
            "error": result.error.message if result.error is not None else None,
            "trusted": verdict.trusted if verdict else None,
            "hostname_ok": verdict.hostname_ok if verdict else None,
            "problems": [
                {"code": p.code, "severity": p.severity.name.lower(), "message": p.message}
                for p in (verdict.problems if verdict else ())
            ],
            "last_scan_at": now,
            "scan_seconds": result.elapsed,
            "earliest_not_after": _naive(verdict.earliest_not_after)
            if verdict and verdict.earliest_not_after
            else None,
            # What this scan said, as `scan --json` prints it: a failed scan, or one without the
            # check or without an answer, stores None (no answer about a certificate not seen now).
            "revocation": result.revocation.as_dict() if result.revocation else None,
            "ari": result.ari.as_dict() if result.ari else None,
        }
        if old is None:
            ctx.session.execute(
                insert(AddressState).values(endpoint_id=endpoint_id, ip=ip, since=now, **values)
            )
        else:
            if change is not None:
                values["since"] = now
            ctx.session.execute(update(AddressState).where(AddressState.id == old.id).values(**values))
        history: list[tuple[Change, int | None]] = []
        if change is not None:
            history.append((change, old_certificate_id))
        if change == Change.RECOVERED:
            # A server restarted with its renewed certificate between two scans: the error
            # hid the switch, so compare with the last certificate this address showed.
            last = _last_certificate(ctx, endpoint_id, ip)
            if last is not None and last != cert_id:
                history.append((Change.NEW_CERTIFICATE, last))
        for kind, previous_certificate_id in history:
            changes.append(kind)
            ctx.session.execute(
                insert(ScanChange).values(
                    endpoint_id=endpoint_id,
                    ip=ip,
                    at=now,
                    change=kind,
                    certificate_id=cert_id,
                    previous_certificate_id=previous_certificate_id,
                    error_kind=error_kind,
                    error=values["error"],
                )
            )
    for ip, old in previous.items():
        if ip not in seen:
            changes.append(Change.ADDRESS_GONE)
            ctx.session.execute(delete(AddressState).where(AddressState.id == old.id))
            ctx.session.execute(
                insert(ScanChange).values(
                    endpoint_id=endpoint_id,
                    ip=ip,
                    at=now,
                    change=Change.ADDRESS_GONE,
                    previous_certificate_id=old.certificate_id,
                )
            )
    failed = bool(results) and all(r.error is not None for r in results)
    endpoint = ctx.session.get(Endpoint, endpoint_id)
    if endpoint is None:  # removed while it was being scanned
        return Recorded(endpoint_id, worst, tuple(changes))
    failures = endpoint.failures + 1 if failed else 0
    factor = min(2 ** (failures - 1), MAX_BACKOFF_FACTOR) if failures else 1
    delay = interval_s * factor * (1 + jitter)
    if owner is None or endpoint.lease_owner in (owner, None):
        # A rescan asked for while this scan ran moved next_scan_at before the lease's end:
        # keep it, since this scan may have connected before the change it is meant to see.
        asked = (
            endpoint.lease_until is not None
            and endpoint.next_scan_at is not None
            and endpoint.next_scan_at < endpoint.lease_until
        )
        if not asked:
            endpoint.next_scan_at = now + timedelta(seconds=delay)
        endpoint.lease_owner = None
        endpoint.lease_until = None
    # Else our lease ran out and another scanner holds the endpoint now: keep its lease and
    # its next_scan_at, or its own record() would be taken for a stranger's and a third
    # scanner could lease the endpoint while the second is still on it.
    endpoint.last_scan_at = now
    endpoint.last_state = worst
    endpoint.failures = failures
    # One lookup per registrable domain: every address carries the same answer.
    registered = [r.registration_expires for r in results if r.registration_expires is not None]
    if registered or not failed:  # a failed scan says nothing about the registration
        endpoint.registration_expires = _naive(registered[0]) if registered else None
    return Recorded(endpoint_id, worst, tuple(changes))


# --- reading back ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredProblem:
    """A problem the judge found at the last scan, as stored with the address's state."""

    code: str  # stable identifier: expired, expires_soon, untrusted, stale_deployment, ...
    severity: str  # warning, critical
    message: str


def stored_problems(raw: object) -> tuple[StoredProblem, ...]:
    """The ``problems`` column read back (JSON written by :func:`record`)."""
    if not isinstance(raw, list):
        return ()
    return tuple(
        StoredProblem(str(p.get("code", "")), str(p.get("severity", "")), str(p.get("message", "")))
        for p in raw
        if isinstance(p, dict)
    )


def _moment(raw: object) -> datetime | None:
    """An ISO 8601 time as `as_dict` wrote it (``...Z``), aware UTC; None if it is not one."""
    if not isinstance(raw, str):
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _text(raw: object) -> str | None:
    return raw if isinstance(raw, str) else None


def stored_revocation(raw: object) -> Revocation | None:
    """The ``revocation`` column read back (``Revocation.as_dict()`` written by :func:`record`)."""
    if not isinstance(raw, dict):
        return None
    try:
        status = Status(str(raw.get("status")))
        method = Method(raw["method"]) if raw.get("method") is not None else None
    except ValueError:
        return None
    return Revocation(
        status, method, _moment(raw.get("revoked_at")), _text(raw.get("reason")), _text(raw.get("error"))
    )


def stored_ari(raw: object) -> RenewalInfo | None:
    """The ``ari`` column read back (``RenewalInfo.as_dict()`` written by :func:`record`)."""
    if not isinstance(raw, dict):
        return None
    start, end, checked = (_moment(raw.get(k)) for k in ("window_start", "window_end", "checked_at"))
    if start is None or end is None or checked is None:
        return None
    return RenewalInfo(start, end, _text(raw.get("explanation_url")), checked)


@dataclass(frozen=True)
class AddressView:
    ip: str
    state: str
    error_kind: str | None
    error: str | None
    sha256: str | None
    not_before: datetime | None
    not_after: datetime | None
    issuer: str | None
    is_lets_encrypt: bool | None
    trusted: bool | None
    hostname_ok: bool | None
    problems: tuple[StoredProblem, ...]
    since: datetime
    last_scan_at: datetime
    revocation: Revocation | None = None  # the last scan's answer; None: not checked or failed
    ari: RenewalInfo | None = None  # the CA's suggested renewal window (RFC 9773); None: unknown
    ari_phase: AriPhase | None = None  # now against that window; None: before it, or unknown
    subject: str | None = None


def address_views(ctx: Ctx, endpoint_id: int) -> list[AddressView]:
    rows = ctx.session.execute(
        select(AddressState, Certificate)
        .outerjoin(Certificate, Certificate.id == AddressState.certificate_id)
        .where(AddressState.endpoint_id == endpoint_id)
        .order_by(AddressState.ip)
    ).all()
    views = []
    for state, cert in rows:
        ari = stored_ari(state.ari)
        views.append(
            AddressView(
                state.ip,
                state.state,
                state.error_kind,
                state.error,
                cert.sha256 if cert else None,
                cert.not_before if cert else None,
                cert.not_after if cert else None,
                cert.issuer_name if cert else None,
                cert.is_lets_encrypt if cert else None,
                state.trusted,
                state.hostname_ok,
                stored_problems(state.problems),
                state.since,
                state.last_scan_at,
                stored_revocation(state.revocation),
                ari,
                phase(ari, ctx.now),
                cert.subject if cert else None,
            )
        )
    return views


# An endpoint's state before its first scan (Endpoint.last_state is NULL).
PENDING = "pending"


@dataclass(frozen=True)
class ExpirationFacts:
    """The line API's `expiration` answer, from the stored results. Fields in answer order;
    None (or empty) fields are left out of the answer."""

    state: str  # the worst address state (scan.judge.State), or PENDING
    addresses: int
    # Of the certificate that expires first, when any address served one:
    not_after: datetime | None = None
    days_left: int | None = None
    sha256: str | None = None
    certificates: int | None = None  # distinct certificates over the addresses
    lets_encrypt: bool | None = None
    trusted: bool | None = None  # every served certificate
    hostname_ok: bool | None = None  # every served certificate
    errors: tuple[str, ...] = ()  # the error kinds seen
    allow_with: str | None = None  # the flag that lifts a "blocked" error
    last_scan: datetime | None = None


def expiration_facts(ctx: Ctx, raw_key: str, domain_text: str) -> ExpirationFacts:
    """The line API's `expiration`: what the stored results say about a domain the key sees."""
    endpoint = visibility.key_endpoint(ctx, raw_key, domain_text)
    views = address_views(ctx, endpoint.id)
    if endpoint.last_scan_at is None or not views:
        return ExpirationFacts(PENDING, 0)
    certs = [v for v in views if v.not_after is not None]
    facts = ExpirationFacts(
        endpoint.last_state or PENDING,
        len([v for v in views if v.ip]),
        last_scan=endpoint.last_scan_at,
    )
    if certs:
        earliest = min(certs, key=lambda v: v.not_after or datetime.max)
        assert earliest.not_after is not None
        facts = replace(
            facts,
            not_after=earliest.not_after,
            days_left=int((earliest.not_after - ctx.now).total_seconds() // 86400),
            sha256=earliest.sha256 or "",
            certificates=len({v.sha256 for v in certs}),
            lets_encrypt=bool(earliest.is_lets_encrypt),
            trusted=all(v.trusted for v in certs),
            hostname_ok=all(v.hostname_ok for v in certs),
        )
    errors_seen = tuple(sorted({v.error_kind for v in views if v.error_kind}))
    if errors_seen:
        # What to do about a blocked address, in a token: the message is in REST and the dashboard.
        allow_with = "--allow-private-targets" if "blocked" in errors_seen else None
        facts = replace(facts, errors=errors_seen, allow_with=allow_with)
    return facts


# --- rescans -----------------------------------------------------------------------------------

# An `add` of a domain already watched (the certbot hook after every renewal) asks for a scan
# this long after it: the hook often runs before the web server's own reload hook has
# finished, and a scan a few seconds later sees the deployed certificate.
RESCAN_AFTER_ADD_S = 5.0
# ... unless the endpoint was scanned this recently: a hook run for many certificates, or a
# loop of adds, costs the scanned server one handshake a minute at most.
RECENT_SCAN_S = 60.0
# Endpoint states `keychest rescan --state` selects by (Endpoint.last_state).
RESCAN_STATES = tuple(state.value for state in State)
SCAN_SETTINGS_NAME = "scanner"


@dataclass(frozen=True)
class Rescan:
    """A scan asked for: the endpoint is due at ``due_at`` (a running scanner notices in ~1 s)."""

    domain: str
    endpoint_id: int
    due_at: datetime
    last_scan_at: datetime | None


def _due_now(ctx: Ctx, endpoint: Endpoint) -> Rescan:
    # Never later than it was due already. A leased endpoint (a scan in flight) comes due
    # too: that scan may have connected before the change the caller wants to see.
    now = database_now(ctx)
    if endpoint.next_scan_at is None or endpoint.next_scan_at > now:
        endpoint.next_scan_at = now
    return Rescan(
        str(domains.DomainName(endpoint.host, endpoint.port)),
        endpoint.id,
        endpoint.next_scan_at,
        endpoint.last_scan_at,
    )


def request_rescan(ctx: Ctx, raw_key: str, domain_text: str) -> Rescan:
    """REST ``servers/rescan``: scan a domain the key sees (its account's, or its own) now.

    Any other domain, registered by someone else or not at all, answers 404 like a missing one.
    """
    return _due_now(ctx, visibility.key_endpoint(ctx, raw_key, domain_text))


def rescan_for_account(ctx: Ctx, account_id: int, endpoint_id: int) -> Rescan:
    """The dashboard's "Scan now" on a server page of the signed-in account."""
    endpoint = visibility.account_endpoint(ctx, account_id, endpoint_id)
    if endpoint is None:
        raise errors.not_found("no such server")
    return _due_now(ctx, endpoint)


@dataclass(frozen=True)
class RescanReport:
    marked: int  # endpoints made due now (those due already included)
    unknown: tuple[str, ...]  # names given that no one monitors


def rescan(
    ctx: Ctx, *, everything: bool = False, state: str | None = None, domain_texts: Sequence[str] = ()
) -> RescanReport:
    """`keychest rescan`: every endpoint, those in one state, or the named ones, due now.

    Exactly one of the three selections; an admin command, so no key and no visibility rule.
    """
    if sum((everything, state is not None, bool(domain_texts))) != 1:
        raise errors.invalid("rescan what: everything, one state, or a list of domains")
    where: list[ColumnElement[bool]] = []
    unknown: list[str] = []
    if state is not None:
        if state not in RESCAN_STATES:
            raise errors.invalid(f"unknown state {state!r}: one of {', '.join(RESCAN_STATES)}")
        where.append(Endpoint.last_state == state)
    elif domain_texts:
        names = [domains.parse_domain(text) for text in domain_texts]
        ids: dict[tuple[str, int], int] = {}
        for chunk in chunks({name.host for name in names}):
            for endpoint_id, host, port in ctx.session.execute(domains.endpoints_by_host(chunk)):
                ids[(host, port)] = endpoint_id
        unknown = [str(name) for name in names if (name.host, name.port) not in ids]
        wanted = {ids[(n.host, n.port)] for n in names if (n.host, n.port) in ids}
        if not wanted:
            return RescanReport(0, tuple(unknown))
        return RescanReport(_mark_due(ctx, wanted), tuple(unknown))
    selected = ctx.session.scalar(select(func.count()).select_from(Endpoint).where(*where)) or 0
    now = database_now(ctx)
    ctx.session.execute(
        update(Endpoint)
        .where(*where, Endpoint.next_scan_at > now)
        .values(next_scan_at=now)
        .execution_options(synchronize_session=False)
    )
    return RescanReport(int(selected), ())


def _mark_due(ctx: Ctx, endpoint_ids: set[int]) -> int:
    now = database_now(ctx)
    for chunk in chunks(endpoint_ids):
        ctx.session.execute(
            update(Endpoint)
            .where(Endpoint.id.in_(chunk), Endpoint.next_scan_at > now)
            .values(next_scan_at=now)
            .execution_options(synchronize_session=False)
        )
    return len(endpoint_ids)


def schedule_after_add(ctx: Ctx, endpoint_ids: Collection[int]) -> set[int]:
    """The endpoints of re-added domains that will be scanned within seconds.

    Those not scanned in the last RECENT_SCAN_S come due RESCAN_AFTER_ADD_S from now, unless
    they are due sooner already; both kinds count as scheduled. One UPDATE and one SELECT per
    500 endpoints, whatever the write batcher's batch holds, and only rows that change are
    written (an unchanged row rewritten would still cost its page in the commit).
    """
    if not endpoint_ids:
        return set()
    now = database_now(ctx)
    soon = now + timedelta(seconds=RESCAN_AFTER_ADD_S)
    recent = now - timedelta(seconds=RECENT_SCAN_S)
    scheduled: set[int] = set()
    for chunk in chunks(endpoint_ids):
        scheduled.update(
            ctx.session.scalars(
                select(Endpoint.id).where(Endpoint.id.in_(chunk), Endpoint.next_scan_at <= soon)
            )
        )
        scheduled.update(
            ctx.session.scalars(
                update(Endpoint)
                .where(
                    Endpoint.id.in_(chunk),
                    Endpoint.next_scan_at > soon,
                    or_(Endpoint.last_scan_at.is_(None), Endpoint.last_scan_at <= recent),
                )
                .values(next_scan_at=soon)
                .returning(Endpoint.id)
                .execution_options(synchronize_session=False)
            )
        )
    return scheduled


def rescan_after_settings_change(ctx: Ctx, fingerprint: str) -> int | None:
    """At a scanner's start: if its settings differ from the last start's, rescan what they judged.

    Results of `blocked` (the private-address guard) and untrusted chains (the trust store)
    may be wrong under new settings (``--allow-private-targets``, ``--ca-file``), so those
    endpoints come due now instead of at their interval. Returns how many, or None when the
    settings did not change. The first start of an installation counts as a change.
    """
    row = ctx.session.get(ScanSettings, SCAN_SETTINGS_NAME)
    if row is not None and row.fingerprint == fingerprint:
        return None
    if row is None:
        ctx.session.add(ScanSettings(name=SCAN_SETTINGS_NAME, fingerprint=fingerprint, changed_at=ctx.now))
    else:
        row.fingerprint = fingerprint
        row.changed_at = ctx.now
    judged = (
        select(AddressState.endpoint_id)
        .where(or_(AddressState.error_kind == "blocked", AddressState.trusted.is_(False)))
        .distinct()
    )
    now = database_now(ctx)
    result = ctx.session.execute(
        update(Endpoint)
        .where(Endpoint.id.in_(judged), Endpoint.next_scan_at > now)
        .values(next_scan_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0) if isinstance(result, CursorResult) else 0
