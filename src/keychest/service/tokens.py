"""Single-use link tokens: random, mailed once, stored only as a SHA-256.

The raw token exists only in the rendered mail (and in the user's browser); the database
holds its hash, so a leaked backup or log cannot confirm, block or sign in anything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import CursorResult, insert, select, update

from keychest.service import errors
from keychest.service.context import Ctx
from keychest.store.models import Token

LIFETIME = timedelta(days=7)
# Unsubscribe links sit in old mails for months; they can only switch mails off.
UNSUBSCRIBE_LIFETIME = timedelta(days=180)
SIGNIN_LIFETIME = timedelta(hours=1)

PURPOSES = (
    "confirm_account",
    "block_account",
    "approve_key",
    "revoke_key",
    "signin",
    "unsubscribe",
    "confirm_address",
    "reopen_account",
)
# Purposes whose link may be used again (an unsubscribe link is harmless to repeat).
REUSABLE = frozenset({"unsubscribe"})
TOKEN_PATTERN_LEN = (20, 80)


@dataclass(frozen=True)
class TokenInfo:
    id: int
    purpose: str
    account_id: int
    api_key_id: int | None
    data: dict
    expires_at: object
    used: bool


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class AckLink:
    """An incident's acknowledge link (mail or channel): the URL to send, the hash to store."""

    url: str
    hash: str


def ack_link(ctx: Ctx) -> AckLink:
    raw = secrets.token_urlsafe(32)
    return AckLink(f"{ctx.settings.mail.public_url}/ack/{raw}", hash_token(raw))


def issue(
    ctx: Ctx,
    purpose: str,
    account_id: int,
    *,
    api_key_id: int | None = None,
    data: dict | None = None,
    lifetime: timedelta | None = None,
) -> str:
    """Make a token and return the raw value (to put in a link; never store or log it)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose}")
    raw = secrets.token_urlsafe(32)
    if lifetime is None:
        lifetime = {"unsubscribe": UNSUBSCRIBE_LIFETIME, "signin": SIGNIN_LIFETIME}.get(purpose, LIFETIME)
    ctx.session.execute(
        insert(Token).values(
            token_hash=hash_token(raw),
            purpose=purpose,
            account_id=account_id,
            api_key_id=api_key_id,
            data=data or {},
            created_at=ctx.now,
            expires_at=ctx.now + lifetime,
        )
    )
    return raw


def _find(ctx: Ctx, raw: str, *, lock: bool = False) -> Token | None:
    low, high = TOKEN_PATTERN_LEN
    if not low <= len(raw) <= high:
        return None
    digest = hash_token(raw)
    query = select(Token).where(Token.token_hash == digest)
    if lock:
        query = query.with_for_update()
    row = ctx.session.scalar(query)
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return row


def _info(row: Token) -> TokenInfo:
    return TokenInfo(
        row.id,
        row.purpose,
        row.account_id,
        row.api_key_id,
        dict(row.data or {}),
        row.expires_at,
        row.used_at is not None,
    )


def peek(ctx: Ctx, raw: str, purposes: tuple[str, ...]) -> TokenInfo:
    """What a link would do, for the GET page: changes nothing. 404 for unknown, used or expired."""
    row = _find(ctx, raw)
    if row is None or row.purpose not in purposes:
        raise errors.not_found("this link is not valid")
    if row.expires_at <= ctx.now:
        raise errors.not_found("this link has expired")
    if row.used_at is not None and row.purpose not in REUSABLE:
        raise errors.not_found("this link has already been used")
    return _info(row)


def consume(ctx: Ctx, raw: str, purposes: tuple[str, ...]) -> TokenInfo:
    """Use a token once (the POST). A second use, even racing, finds it used and gets 404."""
    row = _find(ctx, raw, lock=True)
    if row is None or row.purpose not in purposes:
        raise errors.not_found("this link is not valid")
    if row.expires_at <= ctx.now:
        raise errors.not_found("this link has expired")
    if row.purpose in REUSABLE:
        row.used_at = row.used_at or ctx.now
        return _info(row)
    # A conditional update, so two racing POSTs cannot both see "unused" and both act.
    done = ctx.session.execute(
        update(Token).where(Token.id == row.id, Token.used_at.is_(None)).values(used_at=ctx.now)
    )
    if not isinstance(done, CursorResult) or done.rowcount != 1:
        raise errors.not_found("this link has already been used")
    return _info(row)


def revoke_for_account(ctx: Ctx, account_id: int, purposes: tuple[str, ...]) -> None:
    """Spend every open token of these purposes (confirming makes the block link moot, and back)."""
    ctx.session.execute(
        update(Token)
        .where(Token.account_id == account_id, Token.purpose.in_(purposes), Token.used_at.is_(None))
        .values(used_at=ctx.now)
    )


def revoke_for_key(ctx: Ctx, account_id: int, api_key_id: int) -> None:
    """Spend every open token about one key (its claim moved to another address)."""
    ctx.session.execute(
        update(Token)
        .where(Token.account_id == account_id, Token.api_key_id == api_key_id, Token.used_at.is_(None))
        .values(used_at=ctx.now)
    )
