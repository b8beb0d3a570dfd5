"""What the links in mails do, and the "mail me a sign-in link" request.

Each action consumes its token and acts in one transaction, so a link works exactly once
even when clicked twice at the same moment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select

from keychest.service import accounts, audit, errors, keys, outbox, preferences, tokens
from keychest.service.context import Ctx
from keychest.states import AccountState, KeyState
from keychest.store.models import Account, ApiKey, AuditEvent

SIGNIN_PER_IP_PER_HOUR = 10
SIGNIN_PER_ADDRESS_PER_HOUR = 3

# Which purposes each link path accepts.
ROUTES: dict[str, tuple[str, ...]] = {
    "confirm": ("confirm_account",),
    "block": ("block_account",),
    "approve": ("approve_key",),
    "revoke": ("revoke_key",),
    "signin": ("signin",),
    "unsubscribe": ("unsubscribe",),
    "confirm_address": ("confirm_address",),
    "reopen": ("reopen_account",),
}


@dataclass(frozen=True)
class LinkView:
    """What the GET page shows before the one button is pressed."""

    purpose: str
    email: str
    key_prefix: str | None
    scope: str | None
    # The domains the key registered so far: the owner sees what confirming lets in.
    key_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Done:
    purpose: str
    account_id: int
    email: str
    sign_in: bool  # the caller sets the session cookie
    message: str


def view(ctx: Ctx, route: str, raw: str) -> LinkView:
    info = tokens.peek(ctx, raw, ROUTES[route])
    account = ctx.session.get(Account, info.account_id)
    # A blocked address's links are dead, but for the one that offers to reopen it.
    if account is None or (account.state == AccountState.BLOCKED) != (info.purpose == "reopen_account"):
        raise errors.not_found("this link is not valid")
    summary = outbox.key_summary(ctx, info.api_key_id) if info.api_key_id is not None else None
    email = str(info.data.get("email") or account.email)
    return LinkView(
        info.purpose,
        email,
        summary.prefix if summary else None,
        info.data.get("scope"),
        summary.domains if summary else (),
    )


def act(ctx: Ctx, route: str, raw: str) -> Done:
    info = tokens.consume(ctx, raw, ROUTES[route])
    account = ctx.session.get(Account, info.account_id)
    if account is None:
        raise errors.not_found("this link is not valid")
    purpose = info.purpose
    if purpose == "reopen_account":
        if account.state != AccountState.BLOCKED:
            raise errors.not_found("this address is not blocked")
        accounts.reopen(ctx, account.id)
        tokens.revoke_for_account(ctx, account.id, ("reopen_account",))
        # Signed in on the dashboard, where each waiting key is approved (or revoked) by name.
        return Done(purpose, account.id, account.email, True, "Your address is open again.")
    if account.state == AccountState.BLOCKED:
        raise errors.forbidden("this account is blocked")
    if purpose == "confirm_account":
        # Approves the one key this mail was about: other keys claimed for the address while
        # it was dormant (maybe by a stranger) stay pending until approved by name.
        accounts.confirm(ctx, account.id, info.api_key_id)
        # The "this wasn't me" link of the same mail must not undo a confirmed account later.
        tokens.revoke_for_account(ctx, account.id, ("block_account", "confirm_account"))
        return Done(purpose, account.id, account.email, True, "Your account is confirmed.")
    if purpose == "block_account":
        if account.state == AccountState.ACTIVE:
            raise errors.forbidden("this account is already confirmed; sign in to manage its keys")
        accounts.block(ctx, account.id)
        tokens.revoke_for_account(ctx, account.id, tokens.PURPOSES)
        return Done(
            purpose,
            account.id,
            account.email,
            False,
            "Blocked. The account and its API keys are disabled; nothing more will be mailed to you.",
        )
    if purpose in ("approve_key", "revoke_key"):
        key = ctx.session.get(ApiKey, info.api_key_id) if info.api_key_id is not None else None
        if key is None or key.account_id != account.id:
            raise errors.not_found("this API key is no longer bound to your account")
        other = "revoke_key" if purpose == "approve_key" else "approve_key"
        _spend_sibling(ctx, account.id, key.id, other)
        if purpose == "approve_key":
            if key.state != KeyState.PENDING:
                raise errors.forbidden(f"this API key is {key.state}, not waiting for approval")
            keys.approve(ctx, key.id)
            return Done(purpose, account.id, account.email, False, f"API key {key.prefix}... approved.")
        keys.revoke(ctx, key.id)
        return Done(purpose, account.id, account.email, False, f"API key {key.prefix}... revoked.")
    if purpose == "signin":
        if account.state != AccountState.ACTIVE:
            raise errors.forbidden("this account is not confirmed")
        audit.record(ctx, "signin", account_id=account.id, subject=account.email)
        return Done(purpose, account.id, account.email, True, "Signed in.")
    if purpose == "unsubscribe":
        scope = info.data.get("scope")
        if scope == "weekly":
            preferences.update(ctx, account.id, weekly_enabled=False)
            text = "You will get no more weekly reports."
        else:
            preferences.update(ctx, account.id, alerts_enabled=False)
            text = "You will get no more certificate alerts."
        return Done(purpose, account.id, account.email, False, text + " Sign in to switch them back on.")
    if purpose == "confirm_address":
        email = str(info.data.get("email") or "")
        if not preferences.confirm_address(ctx, account.id, email):
            raise errors.not_found("this address is no longer the account's notification address")
        return Done(purpose, account.id, email, False, f"Notifications will go to {email}.")
    raise errors.not_found("this link is not valid")


def _spend_sibling(ctx: Ctx, account_id: int, key_id: int, purpose: str) -> None:
    from sqlalchemy import update

    from keychest.store.models import Token

    ctx.session.execute(
        update(Token)
        .where(
            Token.account_id == account_id,
            Token.api_key_id == key_id,
            Token.purpose == purpose,
            Token.used_at.is_(None),
        )
        .values(used_at=ctx.now)
    )


def _address_tag(email: str) -> str:
    # The audit log counts requests per address without keeping addresses that have no account.
    return "sha256:" + hashlib.sha256(email.encode()).hexdigest()[:32]


def request_signin(ctx: Ctx, email_text: str) -> None:
    """Queue a sign-in link if the address has a confirmed account. The same outcome either
    way (no account enumeration); 429 past the per-IP or per-address limits, counted the
    same for addresses with and without an account."""
    email = accounts.normalise_email(email_text)
    tag = _address_tag(email)
    since = ctx.now - timedelta(hours=1)
    recent = (
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.event == "signin_request", AuditEvent.at >= since)
    )
    if ctx.ip is not None and (ctx.session.scalar(recent.where(AuditEvent.ip == ctx.ip)) or 0) >= (
        SIGNIN_PER_IP_PER_HOUR
    ):
        raise errors.rate_limited("too many sign-in requests from your address; try again in an hour")
    if (ctx.session.scalar(recent.where(AuditEvent.subject == tag)) or 0) >= SIGNIN_PER_ADDRESS_PER_HOUR:
        raise errors.rate_limited("too many sign-in requests for this address; try again in an hour")
    audit.record(ctx, "signin_request", subject=tag)
    account = ctx.session.scalar(select(Account).where(Account.email == email))
    if account is None or account.state != AccountState.ACTIVE or account.is_placeholder:
        return
    outbox.enqueue(
        ctx,
        kind="signin",
        to_addr=account.email,
        account_id=account.id,
        payload={"ip": ctx.ip, "at": ctx.now.isoformat()},
    )


# `keychest signin-link`: whoever runs it reads the database anyway, so a short life suffices.
ADMIN_LINK_LIFETIME = timedelta(minutes=15)


@dataclass(frozen=True)
class AdminLink:
    url: str
    email: str
    confirms: bool  # the account was dormant: the link confirms it as it signs in


def admin_signin_link(ctx: Ctx, email_text: str) -> AdminLink:
    """A one-time sign-in URL printed instead of mailed (an install without SMTP).

    The link is the mailed one's (GET shows a button, the POST acts, once). An account never
    confirmed, since its confirmation mail could not go out, gets a confirm link, which
    signs in as well; a blocked address (its owner said "not me") gets none.
    """
    email = accounts.normalise_email(email_text)
    account = ctx.session.scalar(select(Account).where(Account.email == email))
    if account is None:
        raise errors.not_found(f"no account for {email}")
    if account.state == AccountState.BLOCKED:
        raise errors.forbidden(f"{email} is blocked: its owner refused the account")
    confirms = account.state == AccountState.DORMANT
    purpose = "confirm_account" if confirms else "signin"
    audit.record(ctx, "signin_link", account_id=account.id, subject=account.email)
    url = outbox.link(ctx, purpose, account.id, lifetime=ADMIN_LINK_LIFETIME)
    return AdminLink(url, account.email, confirms)
