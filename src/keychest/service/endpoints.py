"""Monitored endpoints (KeyChest's "servers") and keys as the REST API and the dashboard see
them: claim, look up, list, remove.

The line API's rules (``domains.add``, ``scans.expiration_facts``) stay where they are; this
module adds what REST and the dashboard need on top, always scoped to the caller: an API key
sees the domains of its account (once approved) or its own, a signed-in account its own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, Select, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from keychest.scan.ari import RenewalInfo
from keychest.scan.revocation import Revocation
from keychest.service import accounts, audit, domains, errors, keys, keystrength, scans, visibility
from keychest.service.context import Ctx
from keychest.states import AccountState, KeyState
from keychest.store.models import Account, AddressState, ApiKey, Certificate, Endpoint, ScanChange, Watch

# KeyChest's published API calls a certificate "renewal due" within 28 days of its not-after.
RENEWAL_DUE = timedelta(days=28)


# --- keys and accounts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    # created: the key is new to us; success: the key was already bound to this address
    status: str
    email: str
    api_key: str
    key_state: str  # active, or pending (the account's owner must approve it)


def claim_new_key(ctx: Ctx, email: str) -> Claimed:
    """KeyChest's GET access/claim/{email}: a fresh key, claimed for the address, in one go."""
    issued = keys.create(ctx)
    outcome = accounts.claim(ctx, issued.key, email)
    return Claimed("created", outcome.email, issued.key, _key_state(ctx, issued.id))


def claim_chosen_key(ctx: Ctx, raw_key: str, email: str) -> Claimed:
    """KeyChest's POST access/claim: register a client-chosen key (if new) and claim it."""
    if not keys.KEY_PATTERN.fullmatch(raw_key):
        raise errors.invalid("an API key is 16 to 64 of A-Z a-z 0-9 -")
    existing = keys.find(ctx, raw_key)
    if existing is None:
        # Keys registered before the bar existed keep working; new ones must clear it.
        keystrength.require_strong(raw_key)
        keys.create(ctx, key=raw_key)
    outcome = accounts.claim(ctx, raw_key, email)
    status = "success" if existing is not None and outcome.outcome == "already" else "created"
    return Claimed(status, outcome.email, raw_key, _key_state(ctx, outcome.api_key_id))


def _key_state(ctx: Ctx, key_id: int) -> str:
    key = ctx.session.get(ApiKey, key_id)
    assert key is not None
    return _claim_state(ctx, key)[0]


def _claim_state(ctx: Ctx, key: ApiKey) -> tuple[str, str | None]:
    """(key state, account state) as the key's holder may see them.

    Until the address's owner acts on the mail, a key claimed for a new address (active, on a
    dormant account) and one claimed for an existing account (pending) look the same:
    ``pending`` and ``unconfirmed``. Otherwise a stranger could learn whether an address has
    an account (or a blocked one) by claiming a key for it.
    """
    account = ctx.session.get(Account, key.account_id) if key.account_id is not None else None
    if account is None:
        return key.state, None
    awaiting = key.state == KeyState.PENDING or (
        account.state == AccountState.DORMANT and not account.is_placeholder
    )
    if awaiting:
        return "pending", "unconfirmed"
    return key.state, account.state


@dataclass(frozen=True)
class KeyOwner:
    email: str | None
    account_state: str | None
    key_prefix: str
    key_state: str
    domains: int


def whoami(ctx: Ctx, raw_key: str) -> KeyOwner:
    key = keys.use(ctx, raw_key)
    account = ctx.session.get(Account, key.account_id) if key.account_id is not None else None
    count = ctx.session.scalar(select(func.count()).select_from(visibility.key_endpoints(key).subquery()))
    key_state, account_state = _claim_state(ctx, key)
    return KeyOwner(
        account.email if account else None,
        account_state,
        key.prefix,
        key_state,
        int(count or 0),
    )


def revoke_own_key(ctx: Ctx, raw_key: str) -> str:
    """A key revokes itself (a leaked key's holder can do no more than its owner could)."""
    key = keys.find(ctx, raw_key)
    if key is None:
        raise errors.unknown_key()
    keys.revoke(ctx, key.id)
    return key.prefix


def account_keys(ctx: Ctx, account_id: int) -> list[ApiKey]:
    return list(
        ctx.session.scalars(select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.id))
    )


def _account_key(ctx: Ctx, account_id: int, key_id: int) -> ApiKey:
    key = ctx.session.get(ApiKey, key_id)
    # Someone else's key id answers like a missing one: ids are not secrets, ownership is.
    if key is None or key.account_id != account_id:
        raise errors.not_found("no such API key")
    return key


def revoke_account_key(ctx: Ctx, account_id: int, key_id: int) -> None:
    keys.revoke(ctx, _account_key(ctx, account_id, key_id).id)


def approve_account_key(ctx: Ctx, account_id: int, key_id: int) -> None:
    key = _account_key(ctx, account_id, key_id)
    if key.state == KeyState.REVOKED:
        raise errors.forbidden("a revoked key cannot be approved")
    keys.approve(ctx, key.id)


# --- expiration (KeyChest's shape) -------------------------------------------------------------


@dataclass(frozen=True)
class AddressExpiry:
    """One scanned address of a domain: its certificate's expiry and the scanner's verdict."""

    ip: str | None  # None: the name did not resolve
    sha256: str | None
    not_after: datetime | None  # None: no certificate seen
    renewal_due: bool | None  # expires within RENEWAL_DUE (None without a certificate)
    expired: bool | None
    last_scan_at: datetime
    state: str
    trusted: bool | None
    hostname_ok: bool | None
    error: str | None
    problems: tuple[scans.StoredProblem, ...]
    revocation: Revocation | None = None  # the last scan's answer; None: not checked or failed
    ari: RenewalInfo | None = None  # the CA's suggested renewal window; None: unknown


@dataclass(frozen=True)
class Expiration:
    """KeyChest's servers/expiration: a domain and its scanned addresses."""

    domain: str
    state: str  # the worst address state, or scans.PENDING
    last_scan_at: datetime | None
    addresses: tuple[AddressExpiry, ...]


def expiration(ctx: Ctx, raw_key: str, domain_text: str, ip: str | None = None) -> Expiration:
    """A domain the key sees, one record per scanned address.

    With ``ip`` (KeyChest's ``ip=``), only that address's record.
    """
    wanted = _ip_filter(ip)
    endpoint = visibility.key_endpoint(ctx, raw_key, domain_text)
    addresses = tuple(
        AddressExpiry(
            view.ip or None,
            view.sha256,
            view.not_after,
            (view.not_after - ctx.now <= RENEWAL_DUE) if view.not_after else None,
            (view.not_after <= ctx.now) if view.not_after else None,
            view.last_scan_at,
            view.state,
            view.trusted,
            view.hostname_ok,
            view.error,
            view.problems,
            view.revocation,
            view.ari,
        )
        for view in scans.address_views(ctx, endpoint.id)
        if wanted is None or _ip_filter(view.ip or None) == wanted
    )
    return Expiration(
        str(domains.DomainName(endpoint.host, endpoint.port)),
        endpoint.last_state or scans.PENDING,
        endpoint.last_scan_at,
        addresses,
    )


def _ip_filter(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text.strip("[]")).compressed
    except ValueError:
        raise errors.invalid(f"ip: {text[:60]!r} is not an IP address") from None


# --- listing and removing ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServerRow:
    id: int
    domain: str
    host: str
    port: int
    state: str
    addresses: int
    earliest_not_after: datetime | None
    last_scan_at: datetime | None
    added_at: datetime | None


def _server_rows(ctx: Ctx, endpoint_ids: Select[int] | Sequence[int]) -> list[ServerRow]:
    per_endpoint = (
        select(
            AddressState.endpoint_id.label("endpoint_id"),
            func.count(AddressState.id).label("addresses"),
            func.min(Certificate.not_after).label("earliest"),
        )
        .outerjoin(Certificate, Certificate.id == AddressState.certificate_id)
        .group_by(AddressState.endpoint_id)
        .subquery()
    )
    added = (
        select(Watch.endpoint_id.label("endpoint_id"), func.min(Watch.added_at).label("added_at"))
        .group_by(Watch.endpoint_id)
        .subquery()
    )
    rows = ctx.session.execute(
        select(
            Endpoint.id,
            Endpoint.host,
            Endpoint.port,
            Endpoint.protocol,
            Endpoint.last_state,
            Endpoint.last_scan_at,
            per_endpoint.c.addresses,
            per_endpoint.c.earliest,
            added.c.added_at,
        )
        .outerjoin(per_endpoint, per_endpoint.c.endpoint_id == Endpoint.id)
        .outerjoin(added, added.c.endpoint_id == Endpoint.id)
        .where(Endpoint.id.in_(endpoint_ids))
        .order_by(Endpoint.host, Endpoint.port)
    ).all()
    return [
        ServerRow(
            r.id,
            str(domains.DomainName(r.host, r.port, r.protocol)),
            r.host,
            r.port,
            r.last_state or "pending",
            int(r.addresses or 0),
            r.earliest,
            r.last_scan_at,
            r.added_at,
        )
        for r in rows
    ]


def list_for_key(ctx: Ctx, raw_key: str) -> list[ServerRow]:
    key = keys.use(ctx, raw_key)
    return _server_rows(ctx, visibility.key_endpoints(key))


def lookup(ctx: Ctx, raw_key: str, domain_text: str) -> tuple[ServerRow, Expiration]:
    """REST ``servers/lookup``: one of the key's servers as listed, with its expiration answer."""
    answer = expiration(ctx, raw_key, domain_text)
    # key_endpoint has checked that the key sees it: one row, not the whole list.
    endpoint = visibility.key_endpoint(ctx, raw_key, domain_text)
    return _server_rows(ctx, [endpoint.id])[0], answer


def _unwatch(ctx: Ctx, endpoint_id: int, key_ids: Select[int]) -> int:
    done = ctx.session.execute(
        delete(Watch).where(Watch.endpoint_id == endpoint_id, Watch.api_key_id.in_(key_ids))
    )
    removed = done.rowcount if isinstance(done, CursorResult) else 0
    still_watched = ctx.session.scalar(select(Watch.id).where(Watch.endpoint_id == endpoint_id).limit(1))
    if still_watched is None:
        # Nobody watches it any more: stop scanning it and forget its results. A later add
        # starts afresh (and is scanned at once, as any new endpoint).
        ctx.session.execute(delete(AddressState).where(AddressState.endpoint_id == endpoint_id))
        ctx.session.execute(delete(ScanChange).where(ScanChange.endpoint_id == endpoint_id))
        ctx.session.execute(delete(Endpoint).where(Endpoint.id == endpoint_id))
    return int(removed or 0)


def remove(ctx: Ctx, raw_key: str, domain_text: str) -> str:
    """Stop watching a domain for the key's account (every key of it), or for the key alone."""
    endpoint = visibility.key_endpoint(ctx, raw_key, domain_text)
    key = keys.use(ctx, raw_key)
    domain = str(domains.DomainName(endpoint.host, endpoint.port))
    _unwatch(ctx, endpoint.id, visibility.key_scope(key))
    audit.record(ctx, "domain_removed", api_key_id=key.id, account_id=key.account_id, subject=domain)
    return domain


def remove_for_account(ctx: Ctx, account_id: int, endpoint_id: int) -> str:
    endpoint = visibility.account_endpoint(ctx, account_id, endpoint_id)
    if endpoint is None:
        raise errors.not_found("no such server")
    domain = str(domains.DomainName(endpoint.host, endpoint.port))
    # Every key of the account, pending and revoked ones too: the account asked for it gone.
    _unwatch(ctx, endpoint.id, select(ApiKey.id).where(ApiKey.account_id == account_id))
    audit.record(ctx, "domain_removed", account_id=account_id, subject=domain)
    return domain


def _endpoint_id(ctx: Ctx, domain: domains.DomainName) -> int:
    """The endpoint's id, created (due for a scan now) if nobody watched it yet."""
    where = (Endpoint.host == domain.host, Endpoint.port == domain.port)
    found = ctx.session.scalar(select(Endpoint.id).where(*where))
    if found is not None:
        return found
    try:
        # A savepoint: another process (PostgreSQL) may create the same endpoint meanwhile.
        with ctx.session.begin_nested():
            return ctx.session.execute(
                insert(Endpoint)
                .values(host=domain.host, port=domain.port, created_at=ctx.now, next_scan_at=ctx.now)
                .returning(Endpoint.id)
            ).scalar_one()
    except IntegrityError:
        return ctx.session.execute(select(Endpoint.id).where(*where)).scalar_one()


def add_for_account(ctx: Ctx, account_id: int, domain_text: str) -> domains.AddOutcome:
    """The dashboard's "add": registered under the account's oldest approved key.

    Keys are stored only as hashes, so the dashboard cannot call ``domains.add`` with one;
    the watch is made here, with the same rules (normalisation, idempotence per account).
    """
    key_id = ctx.session.scalar(visibility.account_keys(account_id).order_by(ApiKey.id).limit(1))
    if key_id is None:
        raise errors.forbidden("the account has no approved API key to register domains with")
    domain = domains.parse_domain(domain_text)
    endpoint_id = _endpoint_id(ctx, domain)
    existing = ctx.session.scalar(
        select(Watch.id)
        .where(Watch.endpoint_id == endpoint_id, Watch.api_key_id.in_(visibility.account_keys(account_id)))
        .limit(1)
    )
    if existing is not None:
        return domains.AddOutcome(domain, existing, endpoint_id, created=False)
    watch_id = ctx.session.execute(
        insert(Watch)
        .values(api_key_id=key_id, endpoint_id=endpoint_id, added_at=ctx.now, added_ip=ctx.ip)
        .returning(Watch.id)
    ).scalar_one()
    audit.record(ctx, "domain_added", api_key_id=key_id, account_id=account_id, subject=str(domain))
    return domains.AddOutcome(domain, watch_id, endpoint_id, created=True)
