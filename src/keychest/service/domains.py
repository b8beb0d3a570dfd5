"""Domains: what may be monitored, and who registered it."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Select, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from keychest.scan import targets
from keychest.scan.protocols import DEFAULT_PROTOCOL
from keychest.service import audit, errors, keys
from keychest.service.bulk import bulk_of, chunks, filled, only
from keychest.service.context import Ctx
from keychest.service.errors import ServiceError
from keychest.states import AccountState, KeyState
from keychest.store.models import Account, ApiKey, Endpoint, Watch

DEFAULT_PORT = targets.DEFAULT_PORT

# The one endpoint type: a normalised A-label name (or an IP literal) and a port, whose
# str() is the display form (`:443` left out, IPv6 in brackets).
DomainName = targets.Endpoint


def parse_domain(text: str) -> DomainName:
    """Normalise what a user typed into a DomainName, or say clearly why not (422).

    The scanner's parser in strict mode (see `keychest.scan.targets`): lower-cased, trailing
    dot removed, UTS 46 to A-labels, ``:port`` optional (default 443), no URLs and no
    underscores. IP literals are accepted (``192.0.2.1``, ``[2001:db8::1]:8443``): intranet
    users watch them, and the scanner's private-address guard decides whether they may be
    scanned.
    """
    try:
        return targets.parse_endpoint(text, strict=True)
    except targets.TargetError as exc:
        raise errors.invalid(str(exc)) from None


# The statements of the hot path, built here so tests can EXPLAIN exactly these.


def endpoints_by_host(hosts: Sequence[str]) -> Select[int, str, int]:
    # By host alone: `host IN (...)` walks the unique (host, port) index, where a row-value
    # `(host, port) IN (...)` makes SQLite scan the whole table.
    return select(Endpoint.id, Endpoint.host, Endpoint.port).where(Endpoint.host.in_(hosts))


def existing_watches(
    endpoint_ids: Sequence[int], key_ids: Collection[int], account_ids: Collection[int]
) -> Select[int, int, int, int | None, str]:
    """Watches of these endpoints by these keys or by any key of these accounts."""
    return (
        select(Watch.id, Watch.api_key_id, Watch.endpoint_id, ApiKey.account_id, ApiKey.state)
        .join(ApiKey, ApiKey.id == Watch.api_key_id)
        .where(Watch.endpoint_id.in_(endpoint_ids))
        .where(or_(Watch.api_key_id.in_(key_ids), ApiKey.account_id.in_(account_ids)))
    )


def watch_counts(key_ids: Sequence[int]) -> Select[int, int]:
    """Domains per key: the quota of keys whose email is not confirmed yet."""
    return (
        select(Watch.api_key_id, func.count()).where(Watch.api_key_id.in_(key_ids)).group_by(Watch.api_key_id)
    )


@dataclass(frozen=True)
class AddOutcome:
    domain: DomainName
    watch_id: int
    endpoint_id: int
    created: bool
    # Already watched and due for a scan within seconds (scans.schedule_after_add).
    scan_scheduled: bool = False


def add(ctx: Ctx, raw_key: str, domain_text: str) -> AddOutcome:
    """Put a domain under monitoring for a key's account. Idempotent."""
    return only(add_many(ctx, [(ctx.ip, (raw_key, domain_text))]))


@bulk_of(add)
def add_many(
    ctx: Ctx, items: Sequence[tuple[str | None, tuple[str, str]]]
) -> list[AddOutcome | ServiceError]:
    """Many adds in a handful of statements, whatever their number: the line API's group commit."""
    results: list[AddOutcome | ServiceError | None] = [None] * len(items)
    used = keys.use_many(ctx, [(ip, raw_key) for ip, (raw_key, _) in items])
    todo: list[tuple[int, str | None, ApiKey, DomainName]] = []
    for index, (ip, (raw_key, domain_text)) in enumerate(items):
        key = used[raw_key]
        if isinstance(key, ServiceError):
            results[index] = key
            continue
        try:
            todo.append((index, ip, key, parse_domain(domain_text)))
        except ServiceError as exc:
            results[index] = exc
    if not todo:
        return filled(results)

    endpoint_ids = _endpoint_ids(ctx, {(d.host, d.port) for _, _, _, d in todo})
    _set_protocols(ctx, endpoint_ids, todo)
    key_ids = {key.id for _, _, key, _ in todo}
    account_ids = {key.account_id for _, _, key, _ in todo if key.account_id is not None}
    wanted_endpoints = set(endpoint_ids.values())
    # (key id or ("account", id), endpoint id) -> watch id, for every watch that already exists
    watched: dict[tuple[object, int], int] = {}
    for chunk in chunks(wanted_endpoints):
        for watch_id, key_id, endpoint_id, account_id, key_state in ctx.session.execute(
            existing_watches(chunk, key_ids, account_ids)
        ):
            watched.setdefault((key_id, endpoint_id), watch_id)
            if account_id is not None and key_state == KeyState.ACTIVE:
                watched.setdefault((("account", account_id), endpoint_id), watch_id)

    limit = ctx.settings.limits.domains_per_unconfirmed_key
    counts: dict[int, int] = {}
    if limit > 0:
        confirmed = _confirmed_accounts(ctx, account_ids)
        capped = [
            key.id
            for _, _, key, _ in todo
            if not (key.state == KeyState.ACTIVE and key.account_id in confirmed)
        ]
        for chunk in chunks(set(capped)):
            counts.update((key_id, count) for key_id, count in ctx.session.execute(watch_counts(chunk)))
            for key_id in chunk:
                counts.setdefault(key_id, 0)

    # New watches, and per item what it gets; ids come back from the INSERT by (key, endpoint).
    new_rows: list[tuple[ApiKey, int, str | None, DomainName]] = []
    placed: set[tuple[int, int]] = set()
    pending: list[tuple[int, DomainName, int, int, bool]] = []  # (index, domain, endpoint, key, created)
    readded: dict[int, AddOutcome] = {}  # index -> outcome, for watches that already existed
    for index, ip, key, domain in todo:
        endpoint_id = endpoint_ids[(domain.host, domain.port)]
        existing = watched.get((key.id, endpoint_id))
        if existing is None and key.state == KeyState.ACTIVE and key.account_id is not None:
            # Idempotent per account: another key of the same account already watches it.
            existing = watched.get((("account", key.account_id), endpoint_id))
        if existing is not None:
            readded[index] = AddOutcome(domain, existing, endpoint_id, created=False)
            continue
        if (key.id, endpoint_id) in placed:  # the same add twice in one batch
            pending.append((index, domain, endpoint_id, key.id, False))
            continue
        if key.id in counts:
            if counts[key.id] >= limit:
                results[index] = errors.forbidden(
                    f"quota: {limit} domains per API key until its email is confirmed"
                )
                continue
            counts[key.id] += 1
        placed.add((key.id, endpoint_id))
        pending.append((index, domain, endpoint_id, key.id, True))
        new_rows.append((key, endpoint_id, ip, domain))
    inserted: dict[tuple[int, int], int] = {}
    if new_rows:
        # RETURNING without a parameter order lets the rows go in multi-row statements; the
        # ids are matched back by (key, endpoint), which is unique.
        inserted = {
            (key_id, endpoint_id): watch_id
            for watch_id, key_id, endpoint_id in ctx.session.execute(
                insert(Watch.__table__).returning(Watch.id, Watch.api_key_id, Watch.endpoint_id),
                [
                    {"api_key_id": key.id, "endpoint_id": endpoint_id, "added_at": ctx.now, "added_ip": ip}
                    for key, endpoint_id, ip, _ in new_rows
                ],
            )
        }
        audit.record_many(
            ctx,
            [
                {
                    "event": "domain_added",
                    "ip": ip,
                    "api_key_id": key.id,
                    "account_id": key.account_id,
                    "subject": str(domain),
                }
                for key, _, ip, domain in new_rows
            ],
        )
    for index, domain, endpoint_id, key_id, created in pending:
        results[index] = AddOutcome(domain, inserted[(key_id, endpoint_id)], endpoint_id, created=created)
    if readded:
        # A re-add is what the certbot hook sends after every renewal: scan the deployment.
        from keychest.service import scans  # scans imports this module

        scheduled = scans.schedule_after_add(ctx, {o.endpoint_id for o in readded.values()})
        for index, outcome in readded.items():
            results[index] = replace(outcome, scan_scheduled=outcome.endpoint_id in scheduled)
    return filled(results)


def _confirmed_accounts(ctx: Ctx, account_ids: set[int]) -> set[int]:
    confirmed: set[int] = set()
    for chunk in chunks(account_ids):
        confirmed.update(
            ctx.session.scalars(
                select(Account.id).where(Account.id.in_(chunk), Account.state == AccountState.ACTIVE)
            )
        )
    return confirmed


def _endpoint_ids(ctx: Ctx, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Ids of endpoints by (host, port), creating the missing ones (due for a scan now)."""
    found = _select_endpoints(ctx, wanted)
    missing = wanted - found.keys()
    if missing:
        # ON CONFLICT DO NOTHING: another process (PostgreSQL) may create the same one meanwhile.
        dialect = ctx.session.get_bind().dialect.name
        make = sqlite_insert if dialect == "sqlite" else pg_insert
        created = ctx.session.execute(
            make(Endpoint.__table__)
            .on_conflict_do_nothing(index_elements=["host", "port"])
            .returning(Endpoint.id, Endpoint.host, Endpoint.port),
            [
                {"host": host, "port": port, "created_at": ctx.now, "next_scan_at": ctx.now}
                for host, port in sorted(missing)
            ],
        )
        found.update({(host, port): endpoint_id for endpoint_id, host, port in created})
        if len(found) < len(wanted):  # lost a race for some: they exist now, read them
            found.update(_select_endpoints(ctx, wanted - found.keys()))
    return found


def _set_protocols(
    ctx: Ctx,
    endpoint_ids: dict[tuple[str, int], int],
    todo: Sequence[tuple[int, str | None, ApiKey, DomainName]],
) -> None:
    """`smtp://mail.example.net` says what its port speaks; the latest such add wins. A plain
    `host:port` leaves the protocol as it is (the certbot hook re-adds names without one),
    so the common all-https batch costs no statement here."""
    wanted: dict[str, set[int]] = {}
    for _, _, _, domain in todo:
        if domain.protocol != DEFAULT_PROTOCOL:
            wanted.setdefault(domain.protocol, set()).add(endpoint_ids[(domain.host, domain.port)])
    for protocol, ids in wanted.items():
        for chunk in chunks(ids):
            ctx.session.execute(
                update(Endpoint)
                .where(Endpoint.id.in_(chunk), Endpoint.protocol != protocol)
                .values(protocol=protocol)
            )


def _select_endpoints(ctx: Ctx, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
    found: dict[tuple[str, int], int] = {}
    for chunk in chunks({host for host, _ in wanted}):
        for endpoint_id, host, port in ctx.session.execute(endpoints_by_host(chunk)):
            if (host, port) in wanted:
                found[(host, port)] = endpoint_id
    return found


@dataclass(frozen=True)
class DomainRow:
    domain: str
    host: str
    port: int
    account_email: str | None
    apikey_prefix: str
    key_state: str
    added_at: datetime


def list_rows(ctx: Ctx, *, raw_key: str | None = None) -> list[DomainRow]:
    query = (
        select(
            Endpoint.host,
            Endpoint.port,
            Endpoint.protocol,
            Account.email,
            ApiKey.prefix,
            ApiKey.state,
            Watch.added_at,
        )
        .join(Watch, Watch.endpoint_id == Endpoint.id)
        .join(ApiKey, ApiKey.id == Watch.api_key_id)
        .outerjoin(Account, Account.id == ApiKey.account_id)
        .order_by(Watch.id)
    )
    if raw_key is not None:
        key = keys.find(ctx, raw_key)
        if key is None:
            raise errors.unknown_key()
        query = query.where(Watch.api_key_id == key.id)
    return [
        DomainRow(str(DomainName(host, port, protocol)), host, port, email, prefix, state, added_at)
        for host, port, protocol, email, prefix, state, added_at in ctx.session.execute(query)
    ]
