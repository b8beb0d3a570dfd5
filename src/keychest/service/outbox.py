"""The durable outbox: mails are rows written in the transaction of their cause, and the
database side of sending them: lease, render, skip, mark sent or retry.

A row's life: ``queued`` -> ``sending`` (leased: ``next_attempt_at`` is then the end of the
lease) -> ``sent``; or back to ``queued`` with a later ``next_attempt_at`` when SMTP fails;
``failed`` after too many attempts; ``skipped`` when it must never be mailed. A ``sending``
row whose lease ended (its sender died) is leased again: see docs/mail.md for the one window
in which that sends a mail twice. The loop that drives this is servers/mailer.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, insert, or_, select, update

from keychest.notify import deliver, render
from keychest.notify.mail import Composed, Outgoing
from keychest.service import accounts, channels, domains, preferences, tokens
from keychest.service.context import Ctx
from keychest.states import AccountState, KeyState, MailState
from keychest.store.models import Account, ApiKey, Channel, Endpoint, OutboxMail, Watch

MAX_ATTEMPTS = 40  # with the back-off capped at an hour: about a day and a half of trying
MAX_REFUSED_ATTEMPTS = 5  # a 5xx answer is unlikely to change; a few tries cover a misconfiguration
BACKOFF_CAP_S = 3600.0

# Where each token's link points (web.mailflow serves these paths).
PATHS = {
    "confirm_account": "/confirm",
    "block_account": "/block",
    "approve_key": "/keys/approve",
    "revoke_key": "/keys/revoke",
    "signin": "/signin",
    "unsubscribe": "/unsubscribe",
    "confirm_address": "/confirm-address",
    "reopen_account": "/reopen",
}


def enqueue(ctx: Ctx, *, kind: str, to_addr: str, account_id: int | None, payload: dict[str, Any]) -> None:
    ctx.session.execute(
        insert(OutboxMail).values(
            created_at=ctx.now,
            kind=kind,
            to_addr=to_addr,
            account_id=account_id,
            payload=payload,
            state=MailState.QUEUED,
            attempts=0,
            next_attempt_at=ctx.now,
        )
    )


def list_all(ctx: Ctx, *, limit: int = 1000) -> list[OutboxMail]:
    return list(ctx.session.scalars(select(OutboxMail).order_by(OutboxMail.id.desc()).limit(limit)))


@dataclass(frozen=True)
class QueuedMail:
    id: int
    kind: str
    to_addr: str
    account_id: int | None
    payload: dict[str, Any]
    attempts: int
    created_at: datetime


class Leased(list[Outgoing]):
    """The mails leased for sending, and how many queued rows the lease looked at.

    ``examined`` counts rows marked skipped too: a batch of only skipped mails is progress,
    not an empty queue, so the sender must carry on rather than wait.
    """

    examined: int = 0


@dataclass(frozen=True)
class KeySummary:
    """What the confirmation and approval mails say about an API key."""

    id: int
    prefix: str
    state: str
    domains: tuple[str, ...]


def key_summary(ctx: Ctx, key_id: int) -> KeySummary | None:
    key = ctx.session.get(ApiKey, key_id)
    if key is None:
        return None
    names = [
        str(domains.DomainName(host, port))
        for host, port in ctx.session.execute(
            select(Endpoint.host, Endpoint.port)
            .join(Watch, Watch.endpoint_id == Endpoint.id)
            .where(Watch.api_key_id == key_id)
            .order_by(Watch.id)
        )
    ]
    return KeySummary(key.id, key.prefix, key.state, tuple(names))


def link(ctx: Ctx, purpose: str, account_id: int, **kwargs: Any) -> str:
    raw = tokens.issue(ctx, purpose, account_id, **kwargs)
    return f"{ctx.settings.mail.public_url}{PATHS[purpose]}/{raw}"


def _unsubscribe_headers(url: str) -> dict[str, str]:
    # RFC 8058 one-click: mail providers POST "List-Unsubscribe=One-Click" to the URL.
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def compose(ctx: Ctx, mail: QueuedMail) -> Composed | str:
    """Render one outbox row (a str is a reason to skip it for good). Runs inside the lease
    transaction: the tokens it issues are committed with the ``sending`` mark."""
    assert mail.account_id is not None  # skip_reason refuses rows without an account
    account_id = mail.account_id
    payload = mail.payload
    base = {
        "email": mail.to_addr,
        "public_url": ctx.settings.mail.public_url,
        "ip": payload.get("ip") or "unknown address",
        "at": payload.get("at"),
    }
    if mail.kind in ("confirm_account", "approve_key", "reopen_account"):
        key = key_summary(ctx, int(payload.get("api_key_id", 0)))
        if key is None:
            return "API key gone"
        if mail.kind == "approve_key" and key.state != KeyState.PENDING:
            return f"API key no longer pending ({key.state})"
        if mail.kind == "confirm_account":
            context = {
                **base,
                "key": key,
                "confirm_url": link(ctx, "confirm_account", account_id, api_key_id=key.id),
                "block_url": link(ctx, "block_account", account_id, api_key_id=key.id),
            }
            subject = "Confirm your keychest account"
        elif mail.kind == "reopen_account":
            context = {**base, "key": key, "reopen_url": link(ctx, "reopen_account", account_id)}
            subject = "You blocked this address on keychest: reopen it?"
        else:
            context = {
                **base,
                "key": key,
                "approve_url": link(ctx, "approve_key", account_id, api_key_id=key.id),
                "revoke_url": link(ctx, "revoke_key", account_id, api_key_id=key.id),
            }
            subject = f"Approve a new API key ({key.prefix}...) for your keychest account"
        text, html = render.render(mail.kind, **context)
        return Composed(subject, text, html, {})
    if mail.kind == "signin":
        context = {**base, "signin_url": link(ctx, "signin", account_id)}
        text, html = render.render("signin", **context)
        return Composed("Your keychest sign-in link", text, html, {})
    if mail.kind == "confirm_address":
        context = {
            **base,
            "confirm_url": link(ctx, "confirm_address", account_id, data={"email": mail.to_addr}),
        }
        text, html = render.render("confirm_address", **context)
        return Composed("Confirm this address for keychest notifications", text, html, {})
    if mail.kind in ("alerts", "weekly"):
        scope = "alerts" if mail.kind == "alerts" else "weekly"
        unsubscribe_url = link(ctx, "unsubscribe", account_id, data={"scope": scope})
        context = {
            **base,
            "unsubscribe_url": unsubscribe_url,
            "dashboard_url": ctx.settings.mail.public_url + "/",
        }
        if mail.kind == "alerts":
            context["alerts"] = payload.get("alerts", [])
        else:
            context["report"] = payload.get("report", {})
        text, html = render.render(mail.kind, **context)
        subject = str(payload.get("subject") or "keychest")
        return Composed(subject, text, html, _unsubscribe_headers(unsubscribe_url))
    return f"unknown mail kind {mail.kind}"


def skip_reason(ctx: Ctx, mail: QueuedMail) -> str | None:
    """Why this mail must never be sent, or None. Checked again right before every send."""
    if accounts.is_placeholder(ctx, mail.to_addr.lower()):
        return "placeholder address"
    account = ctx.session.get(Account, mail.account_id) if mail.account_id is not None else None
    if account is None:
        return "no account"
    if account.is_placeholder:
        return "placeholder account"
    if account.state == AccountState.BLOCKED:
        # The one mail a blocked address may get: the offer to reopen it (rate-limited).
        return None if mail.kind == "reopen_account" else "account blocked"
    if mail.kind == "reopen_account":
        return "address no longer blocked"
    if mail.kind == "confirm_account":
        if account.state != AccountState.DORMANT or mail.to_addr != account.email:
            return "account no longer awaits confirmation"
        return None
    if account.state != AccountState.ACTIVE:
        return "address not confirmed"
    prefs = preferences.get(ctx, account.id)
    if mail.kind == "confirm_address":
        return None if mail.to_addr == prefs.notify_email else "address no longer the notification address"
    if mail.to_addr not in (account.email, preferences.recipient(account, prefs)):
        return "address not confirmed"
    return None


def backoff_s(attempts: int, base_s: float) -> float:
    return min(base_s * 2 ** max(attempts - 1, 0), BACKOFF_CAP_S)


def lease(ctx: Ctx, *, limit: int, lease_s: float) -> Leased:
    """Take up to ``limit`` due mails for ``lease_s`` seconds and render them.

    Rows that must not be sent are marked ``skipped`` here. A mail whose rendering fails (a
    bug) is retried later like an SMTP failure, so it cannot block the queue. On PostgreSQL,
    SKIP LOCKED lets several mailers lease side by side; SQLite has one writer at a time.
    """
    rows = list(
        ctx.session.scalars(
            select(OutboxMail)
            .where(
                OutboxMail.channel_id.is_(None),  # notifications: lease_notifications
                OutboxMail.state.in_((MailState.QUEUED, MailState.SENDING)),
                or_(OutboxMail.next_attempt_at.is_(None), OutboxMail.next_attempt_at <= ctx.now),
            )
            .order_by(OutboxMail.next_attempt_at, OutboxMail.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    leased = Leased()
    leased.examined = len(rows)
    for row in rows:
        mail = QueuedMail(
            row.id,
            row.kind,
            row.to_addr,
            row.account_id,
            dict(row.payload or {}),
            row.attempts,
            row.created_at,
        )
        reason = skip_reason(ctx, mail)
        if reason is None:
            try:
                with ctx.session.begin_nested():
                    composed = compose(ctx, mail)
            except Exception as exc:  # a template or data bug: keep it from blocking the queue
                row.attempts += 1
                _retry_or_fail(ctx, row, f"render: {exc!r}"[:500], base_s=60.0, refused=False)
                continue
            if isinstance(composed, str):
                reason = composed
        if reason is not None:
            row.state, row.last_error = MailState.SKIPPED, reason
            continue
        assert not isinstance(composed, str)
        row.state = MailState.SENDING
        row.attempts += 1
        row.next_attempt_at = ctx.now + timedelta(seconds=lease_s)
        leased.append(Outgoing(row.id, row.kind, row.to_addr, row.created_at, row.attempts, composed))
    return leased


def mark_sent(ctx: Ctx, mail_id: int) -> None:
    ctx.session.execute(
        update(OutboxMail)
        .where(OutboxMail.id == mail_id)
        .values(state=MailState.SENT, sent_at=ctx.now, next_attempt_at=None, last_error=None)
    )


def _retry_or_fail(ctx: Ctx, row: OutboxMail, error: str, *, base_s: float, refused: bool) -> None:
    limit = MAX_REFUSED_ATTEMPTS if refused else MAX_ATTEMPTS
    row.last_error = error[:1000]
    if row.attempts >= limit:
        row.state, row.next_attempt_at = MailState.FAILED, None
    else:
        row.state = MailState.QUEUED
        row.next_attempt_at = ctx.now + timedelta(seconds=backoff_s(row.attempts, base_s))


def mark_failed(ctx: Ctx, mail_id: int, error: str, *, refused: bool, base_s: float) -> None:
    """SMTP did not take the mail: try again later (or give up after enough attempts)."""
    row = ctx.session.get(OutboxMail, mail_id)
    if row is None or row.state != MailState.SENDING:
        return
    _retry_or_fail(ctx, row, error, base_s=base_s, refused=refused)


# --- notifications to alert channels (issue 12) ---------------------------------------------------
#
# The same rows and states as mails, with ``channel_id`` set. Leasing is per channel: a channel
# whose receiver failed (5xx, time-out) is paused with a back-off, so however many rows it has
# queued, the lease never looks at them until the pause ends, and every other channel's rows
# are leased as if it did not exist. A 4xx marks the row failed and the channel ``failing``
# with the receiver's answer (``keychest outbox``), and delivery goes on.

NOTIFICATION = "notification"


def enqueue_notification(
    ctx: Ctx, *, channel_id: int, to_label: str, account_id: int | None, payload: dict[str, Any]
) -> None:
    ctx.session.execute(
        insert(OutboxMail).values(
            created_at=ctx.now,
            kind=NOTIFICATION,
            to_addr=to_label[:254],
            account_id=account_id,
            channel_id=channel_id,
            payload=payload,
            state=MailState.QUEUED,
            attempts=0,
            next_attempt_at=ctx.now,
        )
    )


@dataclass(frozen=True)
class Notification:
    id: int
    channel_id: int
    target: deliver.Target
    payload: dict[str, Any]
    attempts: int


def lease_notifications(
    ctx: Ctx, *, per_channel: int, lease_s: float, busy: frozenset[int] = frozenset(), channels_max: int = 100
) -> list[Notification]:
    """Up to ``per_channel`` due notifications of every channel that is neither paused nor
    ``busy`` (being delivered by this process already), marked ``sending`` for ``lease_s``."""
    due_row = exists().where(
        OutboxMail.channel_id == Channel.id,
        OutboxMail.state.in_((MailState.QUEUED, MailState.SENDING)),
        OutboxMail.next_attempt_at <= ctx.now,
    )
    ready = list(
        ctx.session.scalars(
            select(Channel)
            .where(
                or_(Channel.paused_until.is_(None), Channel.paused_until <= ctx.now),
                Channel.id.not_in(busy) if busy else Channel.id.is_not(None),
                due_row,
            )
            .order_by(Channel.id)
            .limit(channels_max)
        )
    )
    leased: list[Notification] = []
    for channel in ready:
        target = channels.target(ctx, channel)
        if target is None:
            ctx.session.execute(
                update(OutboxMail)
                .where(OutboxMail.channel_id == channel.id, OutboxMail.state == MailState.QUEUED)
                .values(state=MailState.SKIPPED, last_error="channel removed", next_attempt_at=None)
            )
            continue
        rows = ctx.session.scalars(
            select(OutboxMail)
            .where(
                OutboxMail.channel_id == channel.id,
                OutboxMail.state.in_((MailState.QUEUED, MailState.SENDING)),
                OutboxMail.next_attempt_at <= ctx.now,
            )
            .order_by(OutboxMail.next_attempt_at, OutboxMail.id)
            .limit(per_channel)
            .with_for_update(skip_locked=True)
        )
        for row in rows:
            row.state = MailState.SENDING
            row.attempts += 1
            row.next_attempt_at = ctx.now + timedelta(seconds=lease_s)
            leased.append(Notification(row.id, channel.id, target, dict(row.payload or {}), row.attempts))
    return leased


def notifications_sent(ctx: Ctx, notification_ids: list[int], channel_id: int) -> None:
    """Delivered (2xx): one commit for a channel's run of successes."""
    ctx.session.execute(
        update(OutboxMail)
        .where(OutboxMail.id.in_(notification_ids))
        .values(state=MailState.SENT, sent_at=ctx.now, next_attempt_at=None, last_error=None)
    )
    ctx.session.execute(
        update(Channel)
        .where(Channel.id == channel_id)
        .values(state=channels.OK, failures=0, paused_until=None, last_error=None)
    )


def notification_failed(
    ctx: Ctx, notification_id: int, channel_id: int, answer: str, *, refused: bool, base_s: float
) -> None:
    """The receiver did not take it. 4xx (``refused``): the row fails at once and the channel
    is marked failing with the answer. Otherwise the row is retried with back-off and the
    whole channel pauses as long, so its queue waits without holding up anyone else's."""
    row = ctx.session.get(OutboxMail, notification_id)
    channel = ctx.session.get(Channel, channel_id)
    if row is None or channel is None or row.state != MailState.SENDING:
        return
    if refused:
        row.state, row.next_attempt_at, row.last_error = MailState.FAILED, None, answer[:1000]
        channel.state, channel.last_error = channels.FAILING, answer[:1000]
        return
    _retry_or_fail(ctx, row, answer, base_s=base_s, refused=False)
    channel.failures += 1
    channel.last_error = answer[:1000]
    channel.paused_until = ctx.now + timedelta(seconds=backoff_s(channel.failures, base_s))


def release(ctx: Ctx, notification_ids: list[int]) -> None:
    """Leased but not tried (their channel failed first): queued again, the attempt not counted."""
    if not notification_ids:
        return
    ctx.session.execute(
        update(OutboxMail)
        .where(OutboxMail.id.in_(notification_ids), OutboxMail.state == MailState.SENDING)
        .values(state=MailState.QUEUED, attempts=OutboxMail.attempts - 1, next_attempt_at=ctx.now)
    )
