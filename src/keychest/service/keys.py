"""API keys: random, stored only as a hash, revocable."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, bindparam, func, insert, select, update

from keychest.service import audit, errors
from keychest.service.bulk import bulk_of, chunks, filled, only
from keychest.service.context import Ctx
from keychest.service.errors import ServiceError
from keychest.states import KeyState
from keychest.store.models import ApiKey

# What the line API and REST accept as a key: also what a client may choose (REST claim).
KEY_PATTERN = re.compile(r"[A-Za-z0-9-]{16,64}")
PREFIX_LEN = 8
# Writing last_used_at on every request would double the writes of a busy key.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class UseStamps:
    """Last-use stamps noted by reads, written later by the writer in one UPDATE per batch.

    A read (the line API's `expiration`) must not cost a durable commit of its own just to
    say when a key was last used: the stamp waits here. A crash loses the stamps not yet
    written, never an answered write. Shared by the event loop, the readers and the writer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamps: dict[int, tuple[datetime, str | None]] = {}
        self.noted = 0
        self.written = 0

    def note(self, key_id: int, at: datetime, ip: str | None) -> None:
        with self._lock:
            self._stamps[key_id] = (at, ip)
            self.noted += 1

    def __len__(self) -> int:
        return len(self._stamps)

    def take(self) -> dict[int, tuple[datetime, str | None]]:
        with self._lock:
            taken, self._stamps = self._stamps, {}
        return taken

    def give_back(self, taken: dict[int, tuple[datetime, str | None]]) -> None:
        """Stamps whose write failed: kept for the next one, unless a newer stamp came."""
        with self._lock:
            for key_id, stamp in taken.items():
                self._stamps.setdefault(key_id, stamp)


# Set while a read runs for Keychest.read_call: `use_many` notes stamps here instead of
# changing the row (the read transaction writes nothing).
_deferred: ContextVar[UseStamps | None] = ContextVar("keychest_deferred_stamps", default=None)


@contextmanager
def stamps_deferred_to(stamps: UseStamps) -> Iterator[None]:
    token = _deferred.set(stamps)
    try:
        yield
    finally:
        _deferred.reset(token)


def write_stamps(ctx: Ctx, stamps: dict[int, tuple[datetime, str | None]]) -> None:
    """Write noted last-use stamps: one executemany UPDATE, never moving a stamp backwards."""
    if not stamps:
        return
    table = ApiKey.__table__
    statement = (
        update(table)
        .where(
            table.c.id == bindparam("b_id"),
            (table.c.last_used_at.is_(None)) | (table.c.last_used_at <= bindparam("b_at")),
        )
        .values(last_used_at=bindparam("b_at"), last_used_ip=bindparam("b_ip"))
    )
    ctx.session.execute(
        statement,
        [{"b_id": key_id, "b_at": at, "b_ip": ip} for key_id, (at, ip) in sorted(stamps.items())],
    )


@dataclass(frozen=True)
class IssuedKey:
    id: int
    key: str
    prefix: str


def generate_key() -> str:
    """160 random bits as lowercase hex in five dash-separated groups: URL- and shell-safe."""
    text = secrets.token_bytes(20).hex()
    return f"{text[:8]}-{text[8:16]}-{text[16:24]}-{text[24:32]}-{text[32:]}"


def hash_key(key: str) -> str:
    # A plain SHA-256 suffices: keys carry 128+ random bits, so there is nothing to brute-force.
    return hashlib.sha256(key.encode("ascii")).hexdigest()


# The statements of the hot path, built here so tests can EXPLAIN exactly these.


def keys_by_hash(hashes: Sequence[str]) -> Select[ApiKey]:
    return select(ApiKey).where(ApiKey.key_hash.in_(hashes))


def keys_made_since(ips: Sequence[str | None], since: datetime) -> Select[str | None, int]:
    """New keys per source address since a moment: the hourly quota."""
    return (
        select(ApiKey.created_ip, func.count())
        .where(ApiKey.created_ip.in_(ips), ApiKey.created_at >= since)
        .group_by(ApiKey.created_ip)
    )


def create(ctx: Ctx, *, key: str | None = None) -> IssuedKey:
    """Make a new unclaimed key (``key`` lets a REST client choose its own)."""
    return only(create_many(ctx, [(ctx.ip, (key,) if key is not None else ())]))


@bulk_of(create)
def create_many(
    ctx: Ctx, items: Sequence[tuple[str | None, tuple[str, ...]]]
) -> list[IssuedKey | ServiceError]:
    results: list[IssuedKey | ServiceError | None] = [None] * len(items)
    limit = ctx.settings.limits.keys_per_ip_per_hour
    made: dict[str | None, int] = {}
    if limit > 0:
        since = ctx.now - timedelta(hours=1)
        for chunk in chunks({ip for ip, _ in items if ip is not None}):
            made.update((ip, count) for ip, count in ctx.session.execute(keys_made_since(chunk, since)))
    # (item index, raw key, its hash, source address, chosen by the client?): hashed once.
    rows: list[tuple[int, str, str, str | None, bool]] = []
    for index, (ip, args) in enumerate(items):
        if limit > 0 and ip is not None:
            if made.get(ip, 0) >= limit:
                results[index] = errors.rate_limited(f"too many new API keys from {ip}; try again later")
                continue
            made[ip] = made.get(ip, 0) + 1
        raw = args[0] if args else generate_key()
        if not KEY_PATTERN.fullmatch(raw):
            results[index] = errors.invalid("an API key is 16 to 64 of A-Z a-z 0-9 -")
            continue
        rows.append((index, raw, hash_key(raw), ip, bool(args)))
    chosen = [digest for _, _, digest, _, is_chosen in rows if is_chosen]
    if chosen:
        # A client-chosen key may exist already; a generated one has 160 random bits.
        taken = set(ctx.session.scalars(select(ApiKey.key_hash).where(ApiKey.key_hash.in_(chosen))))
        for index, _, digest, _, _ in rows:
            if digest in taken:
                results[index] = errors.forbidden("that API key is taken; choose another")
        rows = [row for row in rows if row[2] not in taken]
    if rows:
        # Matched back by hash: RETURNING without a parameter order batches the rows.
        ids_by_hash = dict(
            ctx.session.execute(
                insert(ApiKey.__table__).returning(ApiKey.key_hash, ApiKey.id),
                [
                    {
                        "key_hash": digest,
                        "prefix": raw[:PREFIX_LEN],
                        "state": KeyState.UNCLAIMED,
                        "created_at": ctx.now,
                        "created_ip": ip,
                    }
                    for _, raw, digest, ip, _ in rows
                ],
            ).all()
        )
        for index, raw, digest, _, _ in rows:
            results[index] = IssuedKey(ids_by_hash[digest], raw, raw[:PREFIX_LEN])
        audit.record_many(
            ctx,
            [
                {
                    "event": "key_created",
                    "ip": ip,
                    "api_key_id": ids_by_hash[digest],
                    "subject": raw[:PREFIX_LEN],
                }
                for _, raw, digest, ip, _ in rows
            ],
        )
    return filled(results)


def find(ctx: Ctx, raw: str) -> ApiKey | None:
    found = use_many(ctx, [(None, raw)], record_use=False)[raw]
    return found if isinstance(found, ApiKey) else None


def use(ctx: Ctx, raw: str) -> ApiKey:
    """The key for a request: unknown -> 401, revoked -> 403. Records its last use."""
    return only([use_many(ctx, [(ctx.ip, raw)])[raw]])


def use_many(
    ctx: Ctx, uses: Sequence[tuple[str | None, str]], *, record_use: bool = True
) -> dict[str, ApiKey | ServiceError]:
    """Look up the keys of many requests at once; records each key's last use and address.

    A revoked key is returned as an error only when ``record_use`` (a request using it);
    ``find`` (``record_use=False``) returns it as it is.
    """
    wanted = {raw: hash_key(raw) for raw in {raw for _, raw in uses} if KEY_PATTERN.fullmatch(raw)}
    found: dict[str, ApiKey] = {}
    for chunk in chunks(set(wanted.values())):
        for stored in ctx.session.scalars(keys_by_hash(chunk)):
            found[stored.key_hash] = stored
    answer: dict[str, ApiKey | ServiceError] = {}
    for ip, raw in uses:
        digest = wanted.get(raw)
        row = found.get(digest) if digest is not None else None
        # The index found the row by hash; compare in constant time all the same.
        if row is None or digest is None or not hmac.compare_digest(row.key_hash, digest):
            answer[raw] = errors.unknown_key()
        elif not record_use:
            answer[raw] = row
        elif row.state == KeyState.REVOKED:
            answer[raw] = errors.forbidden("API key revoked")
        else:
            answer[raw] = row
            stale = row.last_used_at is None or ctx.now - row.last_used_at >= LAST_USED_RESOLUTION
            if stale or row.last_used_ip != ip:
                deferred = _deferred.get()
                if deferred is not None:
                    deferred.note(row.id, ctx.now, ip)
                else:
                    row.last_used_at, row.last_used_ip = ctx.now, ip
    return answer


def revoke(ctx: Ctx, key_id: int) -> None:
    row = ctx.session.get(ApiKey, key_id)
    if row is None:
        raise errors.not_found("no such API key")
    if row.state != KeyState.REVOKED:
        had_access = row.state == KeyState.ACTIVE and row.account_id is not None
        row.state = KeyState.REVOKED
        row.revoked_at = ctx.now
        audit.record(ctx, "key_revoked", api_key_id=row.id, account_id=row.account_id)
        if had_access and row.account_id is not None:
            # accounts imports this module; the import here keeps the cycle out of load time.
            from keychest.service import accounts

            # A key that had the account's access may be the trace of a compromise: its
            # signed-in sessions end too. Refusing a pending stranger's key changes nothing.
            accounts.end_sessions(ctx, row.account_id)


def approve(ctx: Ctx, key_id: int) -> None:
    row = ctx.session.get(ApiKey, key_id)
    if row is None:
        raise errors.not_found("no such API key")
    if row.state == KeyState.PENDING:
        row.state = KeyState.ACTIVE
        audit.record(ctx, "key_approved", api_key_id=row.id, account_id=row.account_id)


def list_all(ctx: Ctx) -> list[ApiKey]:
    return list(ctx.session.scalars(select(ApiKey).order_by(ApiKey.id)))
