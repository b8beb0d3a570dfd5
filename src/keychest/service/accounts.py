"""Accounts: a claim binds an API key to an email; the owner confirms by mail."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select

from keychest.service import audit, errors, keys, outbox
from keychest.service.context import Ctx
from keychest.store.models import Account, ApiKey, AuditEvent

# Deliberately loose: the confirmation mail is the real test of an address.
EMAIL_PATTERN = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class ClaimOutcome:
    # created: new dormant account, confirmation queued; pending: the account's owner must
    # approve the key; already: nothing changed; placeholder: bound to a placeholder address
    outcome: str
    email: str
    account_id: int
    api_key_id: int


def normalise_email(text: str) -> str:
    email = text.strip()
    if len(email) > 254 or not EMAIL_PATTERN.fullmatch(email):
        raise errors.invalid("invalid email address")
    local, _, domain = email.rpartition("@")
    if ".." in domain or "." not in domain:
        raise errors.invalid("invalid email address: the domain needs a dot")
    # Domains are case-insensitive; local parts are in theory not, in practice always.
    return f"{local}@{domain}".lower()


def is_placeholder(ctx: Ctx, email: str) -> bool:
    domain = ctx.settings.mail_domain.lower().rstrip(".")
    return bool(domain) and email.rpartition("@")[2] == domain


def _find(ctx: Ctx, email: str) -> Account | None:
    return ctx.session.scalar(select(Account).where(Account.email == email))


def _check_claim_rate(ctx: Ctx, email: str) -> None:
    _check_claim_rate_ip(ctx)
    limit = ctx.settings.limits.claims_per_email_per_day
    if limit <= 0:
        return
    since = ctx.now - timedelta(days=1)
    count = ctx.session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.event == "claim", AuditEvent.subject == email, AuditEvent.at >= since)
    )
    if count is not None and count >= limit:
        raise errors.rate_limited("too many claims for this address today; try again tomorrow")


def _check_claim_rate_ip(ctx: Ctx) -> None:
    """One client spraying claims over many addresses (mail bombing, probing) is cut off too."""
    limit = ctx.settings.limits.claims_per_ip_per_hour
    if limit <= 0 or ctx.ip is None:
        return
    since = ctx.now - timedelta(hours=1)
    count = ctx.session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.event == "claim", AuditEvent.ip == ctx.ip, AuditEvent.at >= since)
    )
    if count is not None and count >= limit:
        raise errors.rate_limited("too many claims from your address; try again in an hour")


def claim(ctx: Ctx, raw_key: str, email_text: str) -> ClaimOutcome:
    key = keys.use(ctx, raw_key)
    email = normalise_email(email_text)
    placeholder = is_placeholder(ctx, email)

    current = ctx.session.get(Account, key.account_id) if key.account_id is not None else None
    if current is not None:
        if current.email == email:
            return ClaimOutcome("already", email, current.id, key.id)
        if not current.is_placeholder:
            # Moving a key away from a real address would let anyone who saw it take it over.
            raise errors.forbidden("API key already claimed by another address")
        if placeholder:
            raise errors.forbidden("API key already bound to a placeholder address")
    _check_claim_rate(ctx, email)

    account = _find(ctx, email)
    if account is None:
        account = Account(
            email=email,
            state="dormant",
            is_placeholder=placeholder,
            created_at=ctx.now,
            created_ip=ctx.ip,
        )
        ctx.session.add(account)
        ctx.session.flush()
        outcome = "placeholder" if placeholder else "created"
        key.state = "active"
        if not placeholder:
            outbox.enqueue(
                ctx,
                kind="confirm_account",
                to_addr=email,
                account_id=account.id,
                payload={"api_key_id": key.id, "ip": ctx.ip, "at": ctx.now.isoformat()},
            )
    elif account.is_placeholder:
        outcome = "placeholder"
        key.state = "active"
    else:
        outcome = "pending"
        key.state = "pending"
        # Only a confirmed owner is mailed; a dormant one sees the key when confirming.
        if account.state == "active":
            outbox.enqueue(
                ctx,
                kind="approve_key",
                to_addr=email,
                account_id=account.id,
                payload={"api_key_id": key.id, "ip": ctx.ip, "at": ctx.now.isoformat()},
            )
    key.account_id = account.id
    key.claimed_at = ctx.now
    audit.record(ctx, "claim", api_key_id=key.id, account_id=account.id, subject=email, detail=outcome)
    return ClaimOutcome(outcome, email, account.id, key.id)


def confirm(ctx: Ctx, account_id: int) -> Account:
    account = ctx.session.get(Account, account_id)
    if account is None:
        raise errors.not_found("no such account")
    if account.state == "dormant":
        account.state = "active"
        account.confirmed_at = ctx.now
        audit.record(ctx, "confirm", account_id=account.id, subject=account.email)
    return account


def block(ctx: Ctx, account_id: int) -> Account:
    account = ctx.session.get(Account, account_id)
    if account is None:
        raise errors.not_found("no such account")
    account.state = "blocked"
    for key in ctx.session.scalars(select(ApiKey).where(ApiKey.account_id == account.id)):
        if key.state != "revoked":
            key.state, key.revoked_at = "revoked", ctx.now
    audit.record(ctx, "block", account_id=account.id, subject=account.email)
    return account


@dataclass(frozen=True)
class AccountSummary:
    id: int
    email: str
    state: str
    is_placeholder: bool
    keys: int
    domains: int
    created_at: str


def list_summaries(ctx: Ctx) -> list[AccountSummary]:
    from keychest.store.models import Watch

    key_counts = dict(
        ctx.session.execute(select(ApiKey.account_id, func.count()).group_by(ApiKey.account_id)).all()
    )
    domain_counts = dict(
        ctx.session.execute(
            select(ApiKey.account_id, func.count(func.distinct(Watch.endpoint_id)))
            .join(Watch, Watch.api_key_id == ApiKey.id)
            .group_by(ApiKey.account_id)
        ).all()
    )
    return [
        AccountSummary(
            a.id,
            a.email,
            a.state,
            a.is_placeholder,
            key_counts.get(a.id, 0),
            domain_counts.get(a.id, 0),
            a.created_at.isoformat(),
        )
        for a in ctx.session.scalars(select(Account).order_by(Account.id))
    ]
