"""Read-only queries for the dashboard, scoped to one signed-in account.

Every page is a handful of aggregate queries whose cost does not grow with round trips: the
account's endpoints are a subquery (never a Python list of ids fed back in), counts and the
renewal calendar are computed by the database, tables are paged. 10,000 domains cost the
same number of queries as ten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    SQLColumnExpression,
    Text,
    and_,
    case,
    cast,
    func,
    select,
    union,
)

from keychest.scan.judge import State
from keychest.service import domains, errors
from keychest.service.context import Ctx
from keychest.service.endpoints import RENEWAL_DUE
from keychest.service.scans import AddressView, StoredProblem, address_views, stored_problems
from keychest.service.visibility import account_endpoint, account_endpoints, account_keys
from keychest.states import AccountState, KeyState
from keychest.store.models import (
    Account,
    AddressState,
    ApiKey,
    Certificate,
    Endpoint,
    ScanChange,
    Watch,
    WatchedCertificate,
)

STATE_RANK = {"error": 3, "critical": 2, "warning": 1, "ok": 0}
CALENDAR_MONTHS = 12
CALENDAR_ISSUERS = 5  # the biggest issuers get a colour each; the rest are "other"
# Self-signed certificates each name themselves as issuer, and a private CA's name means
# little next to public ones: the calendar counts each kind as one issuer.
SELF_SIGNED = "self-signed"
PRIVATE_CA = "private CA"


def _rank(column: SQLColumnExpression[str | None]) -> ColumnElement[int]:
    return case(*((column == state, rank) for state, rank in STATE_RANK.items()), else_=-1)


@dataclass(frozen=True)
class AccountInfo:
    id: int
    email: str
    state: str
    # Keys claimed for the address that wait for approval by name (issue 10 item 1): their
    # servers stay out of every view until then, which an empty dashboard would not explain.
    pending_keys: int = 0


def account(ctx: Ctx, account_id: int) -> AccountInfo:
    row = ctx.session.get(Account, account_id)
    if row is None or row.state == AccountState.BLOCKED:
        raise errors.not_found("no such account")
    pending = ctx.session.scalar(
        select(func.count(ApiKey.id)).where(ApiKey.account_id == row.id, ApiKey.state == KeyState.PENDING)
    )
    return AccountInfo(row.id, row.email, row.state, int(pending or 0))


# --- tiles -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiles:
    servers: int
    certificates: int
    expiring_7: int
    expiring_28: int
    expired: int
    stale: int
    down: int


def _current_certificates(account_id: int) -> CompoundSelect[int | None]:
    """Ids of the leaf certificates the account's servers serve now, plus its uploaded ones."""
    return union(
        select(AddressState.certificate_id).where(
            AddressState.endpoint_id.in_(account_endpoints(account_id)),
            AddressState.certificate_id.is_not(None),
        ),
        select(WatchedCertificate.certificate_id).where(
            WatchedCertificate.api_key_id.in_(account_keys(account_id))
        ),
    )


def tiles(ctx: Ctx, account_id: int) -> Tiles:
    now = ctx.now
    cert_counts = ctx.session.execute(
        select(
            func.count(Certificate.id),
            func.sum(
                case(
                    (and_(Certificate.not_after > now, Certificate.not_after < now + timedelta(7)), 1),
                    else_=0,
                )
            ),
            func.sum(
                case(
                    (and_(Certificate.not_after > now, Certificate.not_after < now + RENEWAL_DUE), 1),
                    else_=0,
                )
            ),
            func.sum(case((Certificate.not_after <= now, 1), else_=0)),
        ).where(Certificate.id.in_(_current_certificates(account_id)))
    ).one()
    endpoint_counts = ctx.session.execute(
        select(
            func.count(Endpoint.id), func.sum(case((Endpoint.last_state == State.ERROR, 1), else_=0))
        ).where(Endpoint.id.in_(account_endpoints(account_id)))
    ).one()
    # problems is JSON; its text form is the same on SQLite and PostgreSQL for this test.
    stale = ctx.session.scalar(
        select(func.count(AddressState.id)).where(
            AddressState.endpoint_id.in_(account_endpoints(account_id)),
            cast(AddressState.problems, Text).like('%"stale_deployment"%'),
        )
    )
    return Tiles(
        servers=int(endpoint_counts[0] or 0),
        certificates=int(cert_counts[0] or 0),
        expiring_7=int(cert_counts[1] or 0),
        expiring_28=int(cert_counts[2] or 0),
        expired=int(cert_counts[3] or 0),
        stale=int(stale or 0),
        down=int(endpoint_counts[1] or 0),
    )


# --- renewal calendar --------------------------------------------------------------------------


@dataclass(frozen=True)
class Calendar:
    months: list[datetime]  # first day of each month shown
    issuers: list[str]  # stacking order, "other" last if present
    counts: list[dict[str, int]]  # per month: issuer -> certificates whose not-after falls in it
    expired: int  # already expired (not in any month)

    @property
    def peak(self) -> int:
        return max((sum(month.values()) for month in self.counts), default=0)


def _month_starts(now: datetime, count: int) -> list[datetime]:
    starts = []
    year, month = now.year, now.month
    for _ in range(count + 1):
        starts.append(datetime(year, month, 1))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return starts


def calendar(ctx: Ctx, account_id: int) -> Calendar:
    """Certificates by month of expiry and issuer, for the next twelve months (SQL GROUP BY)."""
    starts = _month_starts(ctx.now, CALENDAR_MONTHS)
    bucket = case(
        *((Certificate.not_after < starts[i + 1], i) for i in range(CALENDAR_MONTHS)),
        else_=CALENDAR_MONTHS,
    )
    untrusted = Certificate.id.in_(
        select(AddressState.certificate_id).where(
            AddressState.endpoint_id.in_(account_endpoints(account_id)), AddressState.trusted.is_(False)
        )
    )
    issuer = case(
        (Certificate.self_signed.is_(True), SELF_SIGNED),
        (untrusted, PRIVATE_CA),
        else_=Certificate.issuer_name,
    )
    rows = ctx.session.execute(
        select(bucket.label("bucket"), issuer.label("issuer"), func.count(Certificate.id))
        .where(
            Certificate.id.in_(_current_certificates(account_id)),
            Certificate.not_after >= starts[0],
            Certificate.not_after < starts[-1],
        )
        .group_by(bucket, issuer)
    ).all()
    totals: dict[str, int] = {}
    for _, issuer, count in rows:
        totals[issuer] = totals.get(issuer, 0) + count
    top = [name for name, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:CALENDAR_ISSUERS]]
    counts: list[dict[str, int]] = [{} for _ in range(CALENDAR_MONTHS)]
    for index, issuer, count in rows:
        name = issuer if issuer in top else "other"
        counts[index][name] = counts[index].get(name, 0) + count
    issuers = top + (["other"] if any("other" in month for month in counts) else [])
    expired = ctx.session.scalar(
        select(func.count(Certificate.id)).where(
            Certificate.id.in_(_current_certificates(account_id)), Certificate.not_after <= ctx.now
        )
    )
    return Calendar(starts[:-1], issuers, counts, int(expired or 0))


# --- incidents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    endpoint_id: int
    domain: str
    ip: str
    state: str
    message: str
    since: datetime
    sha256: str | None
    not_after: datetime | None


def _message(problems: tuple[StoredProblem, ...], error: str | None, not_after: datetime | None) -> str:
    if error:
        return error
    worst = sorted(problems, key=lambda p: p.severity != "critical")
    return worst[0].message if worst else ""


def _severity(column: SQLColumnExpression[str]) -> ColumnElement[int]:
    # The scanner's severity: a failed scan (`error`) is critical, like the exit status of
    # `keychest scan`; so an unreachable name does not outrank a certificate about to expire.
    return case(
        (column.in_(("critical", "error")), 2), (column == "warning", 1), (column == "ok", 0), else_=-1
    )


def incidents(ctx: Ctx, account_id: int, *, limit: int = 25) -> tuple[list[Incident], int]:
    """What is wrong right now, worst first: addresses not in the ok state; within one severity
    the certificates that expire first, then the addresses with no certificate (unreachable)."""
    where = (AddressState.endpoint_id.in_(account_endpoints(account_id)), AddressState.state != State.OK)
    total = ctx.session.scalar(select(func.count(AddressState.id)).where(*where))
    rows = ctx.session.execute(
        select(AddressState, Endpoint.host, Endpoint.port, Certificate.sha256, Certificate.not_after)
        .join(Endpoint, Endpoint.id == AddressState.endpoint_id)
        .outerjoin(Certificate, Certificate.id == AddressState.certificate_id)
        .where(*where)
        .order_by(
            _severity(AddressState.state).desc(),
            case((Certificate.not_after.is_(None), 1), else_=0),
            Certificate.not_after,
            Endpoint.host,
            AddressState.ip,
        )
        .limit(limit)
    ).all()
    return (
        [
            Incident(
                s.endpoint_id,
                str(domains.DomainName(host, port)),
                s.ip,
                s.state,
                _message(stored_problems(s.problems), s.error, not_after),
                s.since,
                sha,
                not_after,
            )
            for s, host, port, sha, not_after in rows
        ],
        int(total or 0),
    )


@dataclass(frozen=True)
class Overview:
    account: AccountInfo
    tiles: Tiles
    calendar: Calendar
    incidents: list[Incident]
    incident_total: int


def overview(ctx: Ctx, account_id: int) -> Overview:
    found, total = incidents(ctx, account_id)
    return Overview(account(ctx, account_id), tiles(ctx, account_id), calendar(ctx, account_id), found, total)


# --- servers table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AddressPill:
    ip: str
    state: str
    error_kind: str | None
    not_after: datetime | None
    sha256: str | None


@dataclass(frozen=True)
class ServerLine:
    id: int
    domain: str
    state: str
    earliest_not_after: datetime | None
    issuer: str | None
    last_scan_at: datetime | None
    addresses: list[AddressPill] = field(default_factory=list)


@dataclass(frozen=True)
class ServersPage:
    rows: list[ServerLine]
    total: int
    page: int
    pages: int
    query: str
    sort: str
    descending: bool


SORTS = ("domain", "state", "expiry", "scanned")
PER_PAGE = 50


def servers_page(
    ctx: Ctx,
    account_id: int,
    *,
    query: str = "",
    sort: str = "expiry",
    descending: bool = False,
    page: int = 1,
) -> ServersPage:
    sort = sort if sort in SORTS else "expiry"
    earliest = (
        select(
            AddressState.endpoint_id.label("endpoint_id"),
            # The first expiry on the verified path (an intermediate may go before the leaf).
            func.min(func.coalesce(AddressState.earliest_not_after, Certificate.not_after)).label(
                "not_after"
            ),
        )
        .join(Certificate, Certificate.id == AddressState.certificate_id)
        .where(AddressState.endpoint_id.in_(account_endpoints(account_id)))
        .group_by(AddressState.endpoint_id)
        .subquery()
    )
    conditions = [Endpoint.id.in_(account_endpoints(account_id))]
    text = query.strip().lower()
    if text:
        conditions.append(Endpoint.host.like(f"%{_escape_like(text)}%", escape="\\"))
    total = int(ctx.session.scalar(select(func.count(Endpoint.id)).where(*conditions)) or 0)
    pages = max(1, -(-total // PER_PAGE))
    page = min(max(page, 1), pages)
    key = {
        "domain": Endpoint.host,
        "state": _rank(Endpoint.last_state),
        "expiry": earliest.c.not_after,
        "scanned": Endpoint.last_scan_at,
    }[sort]
    # NULLs (not scanned yet) last whichever way: they are the least informative rows.
    order = [
        case((key.is_(None), 1), else_=0),
        key.desc() if descending else key,
        Endpoint.host,
        Endpoint.port,
    ]
    rows = ctx.session.execute(
        select(
            Endpoint.id,
            Endpoint.host,
            Endpoint.port,
            Endpoint.protocol,
            Endpoint.last_state,
            Endpoint.last_scan_at,
            earliest.c.not_after,
        )
        .outerjoin(earliest, earliest.c.endpoint_id == Endpoint.id)
        .where(*conditions)
        .order_by(*order)
        .offset((page - 1) * PER_PAGE)
        .limit(PER_PAGE)
    ).all()
    ids = [r.id for r in rows]
    pills: dict[int, list[AddressPill]] = {i: [] for i in ids}
    issuers: dict[int, str] = {}
    if ids:
        # One query for the addresses of the whole page (no query per row).
        for state, sha, not_after, issuer in ctx.session.execute(
            select(AddressState, Certificate.sha256, Certificate.not_after, Certificate.issuer_name)
            .outerjoin(Certificate, Certificate.id == AddressState.certificate_id)
            .where(AddressState.endpoint_id.in_(ids))
            .order_by(AddressState.endpoint_id, AddressState.ip)
        ).all():
            pills[state.endpoint_id].append(
                AddressPill(state.ip, state.state, state.error_kind, not_after, sha)
            )
            if issuer and state.endpoint_id not in issuers:
                issuers[state.endpoint_id] = issuer
    lines = [
        ServerLine(
            r.id,
            str(domains.DomainName(r.host, r.port, r.protocol)),
            r.last_state or "pending",
            r.not_after,
            issuers.get(r.id),
            r.last_scan_at,
            pills[r.id],
        )
        for r in rows
    ]
    return ServersPage(lines, total, page, pages, query, sort, descending)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- one server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeLine:
    at: datetime
    ip: str
    change: str
    sha256: str | None
    previous_sha256: str | None
    error: str | None


@dataclass(frozen=True)
class ServerDetail:
    id: int
    domain: str
    state: str
    last_scan_at: datetime | None
    next_scan_at: datetime | None
    addresses: list[AddressView]
    history: list[ChangeLine]
    # The registrable domain's registration expiry (RDAP) at the last scan; None: unknown.
    registration_expires: datetime | None = None


def server_detail(ctx: Ctx, account_id: int, endpoint_id: int) -> ServerDetail:
    endpoint = account_endpoint(ctx, account_id, endpoint_id)
    if endpoint is None:
        raise errors.not_found("no such server")
    # The same view of each address as the line API and REST give (one query, one shape).
    addresses = address_views(ctx, endpoint.id)
    current = Certificate.__table__.alias("current_cert")
    previous = Certificate.__table__.alias("previous")
    history = [
        ChangeLine(r.at, r.ip, r.change, r.sha256, r.previous_sha256, r.error)
        for r in ctx.session.execute(
            select(
                ScanChange.at,
                ScanChange.ip,
                ScanChange.change,
                ScanChange.error,
                current.c.sha256,
                previous.c.sha256.label("previous_sha256"),
            )
            .outerjoin(current, current.c.id == ScanChange.certificate_id)
            .outerjoin(previous, previous.c.id == ScanChange.previous_certificate_id)
            .where(ScanChange.endpoint_id == endpoint.id)
            .order_by(ScanChange.at.desc(), ScanChange.id.desc())
            .limit(200)
        ).all()
    ]
    return ServerDetail(
        endpoint.id,
        str(domains.DomainName(endpoint.host, endpoint.port)),
        endpoint.last_state or "pending",
        endpoint.last_scan_at,
        endpoint.next_scan_at,
        addresses,
        history,
        registration_expires=endpoint.registration_expires,
    )


# --- keys --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyLine:
    id: int
    prefix: str
    state: str
    created_at: datetime
    created_ip: str | None
    last_used_at: datetime | None
    last_used_ip: str | None
    revoked_at: datetime | None
    domains: int


def key_lines(ctx: Ctx, account_id: int) -> list[KeyLine]:
    counts = dict(
        ctx.session.execute(
            select(Watch.api_key_id, func.count(Watch.id))
            .join(ApiKey, ApiKey.id == Watch.api_key_id)
            .where(ApiKey.account_id == account_id)
            .group_by(Watch.api_key_id)
        ).all()
    )
    rows = ctx.session.scalars(
        select(ApiKey)
        .where(ApiKey.account_id == account_id)
        # Pending keys first: they are the ones asking for a decision.
        .order_by(
            case((ApiKey.state == KeyState.PENDING, 0), (ApiKey.state == KeyState.ACTIVE, 1), else_=2),
            ApiKey.id,
        )
    )
    return [
        KeyLine(
            k.id,
            k.prefix,
            k.state,
            k.created_at,
            k.created_ip,
            k.last_used_at,
            k.last_used_ip,
            k.revoked_at,
            int(counts.get(k.id, 0)),
        )
        for k in rows
    ]
