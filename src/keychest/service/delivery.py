"""The outbox's database side for the mail sender: lease, skip, mark sent or retry.

A row's life: ``queued`` -> ``sending`` (leased: ``next_attempt_at`` is then the end of the
lease) -> ``sent``; or back to ``queued`` with a later ``next_attempt_at`` when SMTP fails;
``failed`` after too many attempts; ``skipped`` when it must never be mailed. A ``sending``
row whose lease ended (its sender died) is leased again: see docs/mail.md for the one window
in which that sends a mail twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from keychest.service import accounts, preferences
from keychest.service.context import Ctx
from keychest.store.models import Account, OutboxMail

MAX_ATTEMPTS = 40  # with the back-off capped at an hour: about a day and a half of trying
MAX_REFUSED_ATTEMPTS = 5  # a 5xx answer is unlikely to change; a few tries cover a misconfiguration
BACKOFF_CAP_S = 3600.0


@dataclass(frozen=True)
class QueuedMail:
    id: int
    kind: str
    to_addr: str
    account_id: int | None
    payload: dict
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Composed:
    """A rendered mail, held in memory only: it may carry raw link tokens."""

    subject: str
    text: str
    html: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Outgoing:
    id: int
    kind: str
    to_addr: str
    created_at: datetime
    attempts: int
    mail: Composed


class Leased(list[Outgoing]):
    """The mails leased for sending, and how many queued rows the lease looked at.

    ``examined`` counts rows marked skipped too: a batch of only skipped mails is progress,
    not an empty queue, so the sender must carry on rather than wait.
    """

    examined: int = 0


# compose returns the mail, or a reason (str) to skip it for good.
Composer = Callable[[Ctx, QueuedMail], "Composed | str"]

# Kinds that may go to an address nobody has confirmed yet: the confirmation mails themselves.
TO_UNCONFIRMED = {"confirm_account", "confirm_address"}


def skip_reason(ctx: Ctx, mail: QueuedMail) -> str | None:
    """Why this mail must never be sent, or None. Checked again right before every send."""
    if accounts.is_placeholder(ctx, mail.to_addr.lower()):
        return "placeholder address"
    account = ctx.session.get(Account, mail.account_id) if mail.account_id is not None else None
    if account is None:
        return "no account"
    if account.is_placeholder:
        return "placeholder account"
    if account.state == "blocked":
        return "account blocked"
    if mail.kind == "confirm_account":
        if account.state != "dormant" or mail.to_addr != account.email:
            return "account no longer awaits confirmation"
        return None
    if account.state != "active":
        return "address not confirmed"
    prefs = preferences.get(ctx, account.id)
    if mail.kind == "confirm_address":
        return None if mail.to_addr == prefs.notify_email else "address no longer the notification address"
    if mail.to_addr not in (account.email, preferences.recipient(account, prefs)):
        return "address not confirmed"
    return None


def backoff_s(attempts: int, base_s: float) -> float:
    return min(base_s * 2 ** max(attempts - 1, 0), BACKOFF_CAP_S)


def lease(ctx: Ctx, compose: Composer, *, limit: int, lease_s: float) -> Leased:
    """Take up to ``limit`` due mails for ``lease_s`` seconds and render them.

    Rows that must not be sent are marked ``skipped`` here. A mail whose rendering fails (a
    bug) is retried later like an SMTP failure, so it cannot block the queue. On PostgreSQL,
    SKIP LOCKED lets several mailers lease side by side; SQLite has one writer at a time.
    """
    rows = list(
        ctx.session.scalars(
            select(OutboxMail)
            .where(
                OutboxMail.state.in_(("queued", "sending")),
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
            row.state, row.last_error = "skipped", reason
            continue
        assert not isinstance(composed, str)
        row.state = "sending"
        row.attempts += 1
        row.next_attempt_at = ctx.now + timedelta(seconds=lease_s)
        leased.append(Outgoing(row.id, row.kind, row.to_addr, row.created_at, row.attempts, composed))
    return leased


def mark_sent(ctx: Ctx, mail_id: int) -> None:
    ctx.session.execute(
        update(OutboxMail)
        .where(OutboxMail.id == mail_id)
        .values(state="sent", sent_at=ctx.now, next_attempt_at=None, last_error=None)
    )


def _retry_or_fail(ctx: Ctx, row: OutboxMail, error: str, *, base_s: float, refused: bool) -> None:
    limit = MAX_REFUSED_ATTEMPTS if refused else MAX_ATTEMPTS
    row.last_error = error[:1000]
    if row.attempts >= limit:
        row.state, row.next_attempt_at = "failed", None
    else:
        row.state = "queued"
        row.next_attempt_at = ctx.now + timedelta(seconds=backoff_s(row.attempts, base_s))


def mark_failed(ctx: Ctx, mail_id: int, error: str, *, refused: bool, base_s: float) -> None:
    """SMTP did not take the mail: try again later (or give up after enough attempts)."""
    row = ctx.session.get(OutboxMail, mail_id)
    if row is None or row.state != "sending":
        return
    _retry_or_fail(ctx, row, error, base_s=base_s, refused=refused)


def next_due_at(ctx: Ctx) -> datetime | None:
    return ctx.session.scalar(
        select(OutboxMail.next_attempt_at)
        .where(OutboxMail.state.in_(("queued", "sending")))
        .order_by(OutboxMail.next_attempt_at)
        .limit(1)
    )


def counts(ctx: Ctx) -> dict[str, int]:
    from sqlalchemy import func

    return dict(ctx.session.execute(select(OutboxMail.state, func.count()).group_by(OutboxMail.state)).all())
