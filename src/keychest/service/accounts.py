"""Accounts: a claim binds an API key to an email; the owner confirms by mail."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update

from keychest.service import audit, errors, keys, outbox, tokens
from keychest.service.context import Ctx
from keychest.states import AccountState, KeyState, MailState
from keychest.store.models import Account, ApiKey, AuditEvent, OutboxMail

# Deliberately loose: the confirmation mail is the real test of an address.
EMAIL_PATTERN = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class ClaimOutcome:
    # created: new dormant account, confirmation queued; pending: the address's owner must
    # confirm or approve the key (also for a blocked address: the line API must not tell);
    # already: nothing changed; placeholder: bound to a placeholder address
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


# Confirmation (dormant) or approval (confirmed) mails one address gets in a day about keys
# claimed for it, whoever claims them (issue 10 item 1).
CONFIRM_MAILS_PER_DAY = 5
# A blocked address asked for silence: one "reopen?" mail a day at most.
REOPEN_MAILS_PER_DAY = 1


def _recent(ctx: Ctx, event: str, subject: str, *, ip_only: bool = False) -> int:
    query = (
        select(func.count())
        .select_from(AuditEvent)
        .where(
            AuditEvent.event == event,
            AuditEvent.subject == subject,
            AuditEvent.at >= ctx.now - timedelta(days=1),
        )
    )
    if ip_only:
        query = query.where(AuditEvent.ip == ctx.ip if ctx.ip is not None else AuditEvent.ip.is_(None))
    return int(ctx.session.scalar(query) or 0)


def _check_claim_rate(ctx: Ctx, email: str) -> None:
    _check_claim_rate_ip(ctx)
    limit = ctx.settings.limits.claims_per_email_per_day
    # Counted per (address, client address): a stranger spending the day's claims for a
    # victim's address does not lock its owner, who claims from elsewhere, out.
    if limit > 0 and _recent(ctx, "claim", email, ip_only=True) >= limit:
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


def _mail_about_key(ctx: Ctx, kind: str, account: Account, key: ApiKey) -> None:
    """Queue a mail about one key; it names the key (prefix, when, from where, its domains)."""
    outbox.enqueue(
        ctx,
        kind=kind,
        to_addr=account.email,
        account_id=account.id,
        payload={"api_key_id": key.id, "ip": ctx.ip, "at": ctx.now.isoformat()},
    )
    audit.record(ctx, f"mail_{kind}", api_key_id=key.id, account_id=account.id, subject=account.email)


def _release(ctx: Ctx, key: ApiKey, account: Account) -> None:
    """Take a not yet confirmed key back from an address (a mistaken or truncated claim).

    Its queued mails to that address are dropped and the links of those already sent stop
    working, so the first address hears nothing more about this key.
    """
    ctx.session.execute(
        update(OutboxMail)
        .where(
            OutboxMail.account_id == account.id,
            OutboxMail.state == MailState.QUEUED,
            OutboxMail.kind.in_(KEY_MAIL_KINDS),
        )
        .where(OutboxMail.payload["api_key_id"].as_integer() == key.id)
        .values(state=MailState.SKIPPED, last_error="claim moved to another address")
    )
    tokens.revoke_for_key(ctx, account.id, key.id)
    audit.record(ctx, "claim_moved", api_key_id=key.id, account_id=account.id, subject=account.email)


KEY_MAIL_KINDS = ("confirm_account", "approve_key", "reopen_account")


def claim(ctx: Ctx, raw_key: str, email_text: str) -> ClaimOutcome:
    key = keys.use(ctx, raw_key)
    email = normalise_email(email_text)
    placeholder = is_placeholder(ctx, email)

    current = ctx.session.get(Account, key.account_id) if key.account_id is not None else None
    moving_from: Account | None = None
    if current is not None:
        if current.email == email:
            return ClaimOutcome("already", email, current.id, key.id)
        if placeholder:
            raise errors.forbidden("API key already bound to a placeholder address")
        if not current.is_placeholder:
            if key.state != KeyState.PENDING:
                # Moving a confirmed key away from a real address would let anyone who saw it
                # take it over; an unconfirmed one still belongs to whoever holds it.
                raise errors.forbidden("API key already claimed by another address")
            moving_from = current
    _check_claim_rate(ctx, email)

    account = _find(ctx, email)
    mail: str | None = None
    if account is None:
        account = Account(
            email=email,
            state=AccountState.DORMANT,
            is_placeholder=placeholder,
            created_at=ctx.now,
            created_ip=ctx.ip,
        )
        ctx.session.add(account)
        ctx.session.flush()
        outcome = "placeholder" if placeholder else "created"
        # Pending until the address's owner confirms this very key.
        key.state = KeyState.ACTIVE if placeholder else "pending"
        mail = None if placeholder else "confirm_account"
    elif account.is_placeholder:
        outcome = "placeholder"
        key.state = KeyState.ACTIVE
    else:
        # The same answer for a new, dormant, confirmed or blocked address (no enumeration).
        outcome = "pending"
        key.state = KeyState.PENDING
        if account.state == AccountState.DORMANT:
            # Every key claimed for a dormant address gets its own confirmation mail, so the
            # owner's own key is never confirmed through a mail a stranger caused. Past the
            # day's cap the claim still holds (pending, approved by name on the dashboard once
            # any mail is confirmed): refusing it would let a stranger lock the owner out.
            if _recent(ctx, "mail_confirm_account", email) < CONFIRM_MAILS_PER_DAY:
                mail = "confirm_account"
        elif (
            account.state == AccountState.ACTIVE
            and _recent(ctx, "mail_approve_key", email) < CONFIRM_MAILS_PER_DAY
        ):
            # The same cap: past it the key waits on the dashboard's keys page, unmailed.
            mail = "approve_key"
        # Blocking stopped the mails, not the owner: offer to reopen, once a day at most.
        elif (
            account.state == AccountState.BLOCKED
            and _recent(ctx, "mail_reopen_account", email) < REOPEN_MAILS_PER_DAY
        ):
            mail = "reopen_account"
    if moving_from is not None:
        _release(ctx, key, moving_from)
    key.account_id = account.id
    key.claimed_at = ctx.now
    if mail is not None:
        _mail_about_key(ctx, mail, account, key)
    audit.record(ctx, "claim", api_key_id=key.id, account_id=account.id, subject=email, detail=outcome)
    return ClaimOutcome(outcome, email, account.id, key.id)


def confirm(ctx: Ctx, account_id: int, api_key_id: int | None = None) -> Account:
    """The owner confirms the address, and with it only the key the mail was about."""
    account = ctx.session.get(Account, account_id)
    if account is None:
        raise errors.not_found("no such account")
    if account.state == AccountState.DORMANT:
        account.state = AccountState.ACTIVE
        account.confirmed_at = ctx.now
        audit.record(ctx, "confirm", account_id=account.id, subject=account.email)
    if api_key_id is not None:
        key = ctx.session.get(ApiKey, api_key_id)
        if key is not None and key.account_id == account.id and key.state == KeyState.PENDING:
            keys.approve(ctx, key.id)
    return account


def reopen(ctx: Ctx, account_id: int) -> Account:
    """The owner of a blocked address takes it back: confirmed, keys still to approve one by one."""
    account = ctx.session.get(Account, account_id)
    if account is None:
        raise errors.not_found("no such account")
    if account.state == AccountState.BLOCKED:
        account.state = AccountState.ACTIVE
        account.confirmed_at = ctx.now
        audit.record(ctx, "reopen", account_id=account.id, subject=account.email)
    return account


def block(ctx: Ctx, account_id: int) -> Account:
    account = ctx.session.get(Account, account_id)
    if account is None:
        raise errors.not_found("no such account")
    account.state = AccountState.BLOCKED
    for key in ctx.session.scalars(select(ApiKey).where(ApiKey.account_id == account.id)):
        if key.state != KeyState.REVOKED:
            key.state, key.revoked_at = KeyState.REVOKED, ctx.now
    end_sessions(ctx, account.id)
    audit.record(ctx, "block", account_id=account.id, subject=account.email)
    return account


def end_sessions(ctx: Ctx, account_id: int) -> None:
    """Every session cookie signed so far stops working (sign-out everywhere, block, revoke)."""
    ctx.session.execute(
        update(Account).where(Account.id == account_id).values(session_version=Account.session_version + 1)
    )


def session_version(ctx: Ctx, account_id: int) -> int | None:
    """The version a valid session cookie carries; None: no session may be valid (blocked)."""
    row = ctx.session.execute(
        select(Account.state, Account.session_version).where(Account.id == account_id)
    ).first()
    if row is None or row[0] == "blocked":
        return None
    return int(row[1] or 0)


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
