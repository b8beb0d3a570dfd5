"""API keys: random, stored only as a hash, revocable."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, insert, select

from keychest.service import audit, errors
from keychest.service.context import Ctx
from keychest.store.models import ApiKey

# What the line API and REST accept as a key: also what a client may choose (REST claim).
KEY_PATTERN = re.compile(r"[A-Za-z0-9-]{16,64}")
PREFIX_LEN = 8
# Writing last_used_at on every request would double the writes of a busy key.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedKey:
    id: int
    key: str
    prefix: str


def generate_key() -> str:
    """160 random bits as lowercase base32 in dash-separated groups: URL- and shell-safe."""
    text = base64.b32encode(secrets.token_bytes(20)).decode("ascii").lower()
    return "-".join(text[i : i + 8] for i in range(0, 32, 8))


def hash_key(key: str) -> str:
    # A plain SHA-256 suffices: keys carry 128+ random bits, so there is nothing to brute-force.
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def create(ctx: Ctx, *, key: str | None = None) -> IssuedKey:
    """Make a new unclaimed key (``key`` lets a REST client choose its own)."""
    limit = ctx.settings.limits.keys_per_ip_per_hour
    if limit > 0 and ctx.ip is not None:
        since = ctx.now - timedelta(hours=1)
        made = ctx.session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.created_ip == ctx.ip, ApiKey.created_at >= since)
        )
        if made is not None and made >= limit:
            raise errors.rate_limited(f"too many new API keys from {ctx.ip}; try again later")
    raw = key if key is not None else generate_key()
    if not KEY_PATTERN.fullmatch(raw):
        raise errors.invalid("an API key is 16 to 64 of A-Z a-z 0-9 -")
    key_id = ctx.session.execute(
        insert(ApiKey)
        .values(
            key_hash=hash_key(raw),
            prefix=raw[:PREFIX_LEN],
            state="unclaimed",
            created_at=ctx.now,
            created_ip=ctx.ip,
        )
        .returning(ApiKey.id)
    ).scalar_one()
    audit.record(ctx, "key_created", api_key_id=key_id, subject=raw[:PREFIX_LEN])
    return IssuedKey(key_id, raw, raw[:PREFIX_LEN])


def find(ctx: Ctx, raw: str) -> ApiKey | None:
    if not KEY_PATTERN.fullmatch(raw):
        return None
    digest = hash_key(raw)
    row = ctx.session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The index found the row by hash; compare in constant time all the same.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row


def use(ctx: Ctx, raw: str) -> ApiKey:
    """The key for a request: unknown -> 401, revoked -> 403. Records its last use."""
    row = find(ctx, raw)
    if row is None:
        raise errors.unknown_key()
    if row.state == "revoked":
        raise errors.forbidden("API key revoked")
    if row.last_used_at is None or ctx.now - row.last_used_at >= LAST_USED_RESOLUTION or (
        row.last_used_ip != ctx.ip
    ):
        row.last_used_at, row.last_used_ip = ctx.now, ctx.ip
    return row


def revoke(ctx: Ctx, key_id: int) -> None:
    row = ctx.session.get(ApiKey, key_id)
    if row is None:
        raise errors.not_found("no such API key")
    if row.state != "revoked":
        row.state = "revoked"
        row.revoked_at = ctx.now
        audit.record(ctx, "key_revoked", api_key_id=row.id, account_id=row.account_id)


def approve(ctx: Ctx, key_id: int) -> None:
    row = ctx.session.get(ApiKey, key_id)
    if row is None:
        raise errors.not_found("no such API key")
    if row.state == "pending":
        row.state = "active"
        audit.record(ctx, "key_approved", api_key_id=row.id, account_id=row.account_id)


def list_all(ctx: Ctx) -> list[ApiKey]:
    return list(ctx.session.scalars(select(ApiKey).order_by(ApiKey.id)))
