"""Per-account notification preferences: where mail goes, which alerts, when the weekly report.

An account without a row has the defaults. ``update`` validates everything and raises
ServiceError 422 with a message fit to show next to the form field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from keychest.service import accounts, audit, errors, outbox
from keychest.service.context import Ctx
from keychest.store.models import Account, AccountPreferences

DEFAULT_THRESHOLDS: tuple[int, ...] = (28, 14, 7, 3, 1)
TIME_PATTERN = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
MAX_THRESHOLDS = 10
# Mails an owner's own actions send (the notification-address confirmation): per account and
# per recipient in a day, so the setting cannot be used to mail-bomb a chosen address.
OWNER_MAILS_PER_ACCOUNT_PER_DAY = 5
OWNER_MAILS_PER_RECIPIENT_PER_DAY = 3


@dataclass(frozen=True)
class Preferences:
    # None: mail goes to the account's own address. An override gets mail once confirmed.
    notify_email: str | None = None
    expiry_thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    weekly_enabled: bool = True
    weekly_day: int = 0  # Monday = 0 ... Sunday = 6
    weekly_time: str = "08:00"  # in `timezone`
    timezone: str = "UTC"
    alerts_enabled: bool = True
    # How long an endpoint may be unreachable before it is worth a mail.
    down_grace_minutes: int = 60
    notify_email_confirmed: bool = False


EDITABLE = frozenset(f.name for f in fields(Preferences) if f.name != "notify_email_confirmed")


def _from_row(row: AccountPreferences | None) -> Preferences:
    if row is None:
        return Preferences()
    thresholds = tuple(int(t) for t in (row.expiry_thresholds or ())) or DEFAULT_THRESHOLDS
    return Preferences(
        notify_email=row.notify_email,
        expiry_thresholds=thresholds,
        weekly_enabled=row.weekly_enabled,
        weekly_day=row.weekly_day,
        weekly_time=row.weekly_time,
        timezone=row.timezone,
        alerts_enabled=row.alerts_enabled,
        down_grace_minutes=row.down_grace_minutes,
        notify_email_confirmed=row.notify_email_confirmed,
    )


def get(ctx: Ctx, account_id: int) -> Preferences:
    if ctx.session.get(Account, account_id) is None:
        raise errors.not_found("no such account")
    return _from_row(ctx.session.get(AccountPreferences, account_id))


def get_many(ctx: Ctx, account_ids: list[int]) -> dict[int, Preferences]:
    from sqlalchemy import select

    rows = {
        row.account_id: row
        for row in ctx.session.scalars(
            select(AccountPreferences).where(AccountPreferences.account_id.in_(account_ids))
        )
    }
    return {account_id: _from_row(rows.get(account_id)) for account_id in account_ids}


def validate_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise errors.invalid(f"unknown time zone {name[:64]!r} (use a name like Europe/Prague)") from None
    return name


def _validated(current: Preferences, account: Account, ctx: Ctx, changes: dict[str, Any]) -> Preferences:
    unknown = set(changes) - EDITABLE
    if unknown:
        raise errors.invalid(f"unknown preference {sorted(unknown)[0]}")
    values: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "notify_email":
            if value is None or str(value).strip() == "":
                values[name] = None
                continue
            email = accounts.normalise_email(str(value))
            if accounts.is_placeholder(ctx, email):
                raise errors.invalid("a placeholder address cannot receive mail")
            values[name] = None if email == account.email else email
        elif name == "expiry_thresholds":
            if isinstance(value, str):
                value = [part for part in re.split(r"[,\s]+", value) if part]
            try:
                days = sorted({int(v) for v in value}, reverse=True)
            except (TypeError, ValueError):
                raise errors.invalid("thresholds are whole numbers of days, e.g. 28, 14, 7, 3, 1") from None
            if not days:
                raise errors.invalid("give at least one threshold")
            if len(days) > MAX_THRESHOLDS or any(not 1 <= d <= 365 for d in days):
                raise errors.invalid(f"up to {MAX_THRESHOLDS} thresholds, each 1 to 365 days")
            values[name] = tuple(days)
        elif name in ("weekly_enabled", "alerts_enabled"):
            if not isinstance(value, bool):
                raise errors.invalid(f"{name} is true or false")
            values[name] = value
        elif name == "weekly_day":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 6:
                raise errors.invalid("weekly_day is 0 (Monday) to 6 (Sunday)")
            values[name] = value
        elif name == "weekly_time":
            if not isinstance(value, str) or not TIME_PATTERN.fullmatch(value):
                raise errors.invalid("weekly_time is HH:MM, 00:00 to 23:59")
            values[name] = value
        elif name == "timezone":
            if not isinstance(value, str):
                raise errors.invalid("timezone is a name like Europe/Prague")
            values[name] = validate_timezone(value)
        elif name == "down_grace_minutes":
            if isinstance(value, bool) or not isinstance(value, int) or not 5 <= value <= 7 * 1440:
                raise errors.invalid("down_grace_minutes is 5 to 10080")
            values[name] = value
    return replace(current, **values)


def update(ctx: Ctx, account_id: int, **changes: Any) -> Preferences:
    """Change some preferences. A new notification address gets a confirmation mail first."""
    account = ctx.session.get(Account, account_id)
    if account is None:
        raise errors.not_found("no such account")
    row = ctx.session.get(AccountPreferences, account_id)
    current = _from_row(row)
    new = _validated(current, account, ctx, changes)
    address_changed = new.notify_email != current.notify_email
    if address_changed:
        new = replace(new, notify_email_confirmed=False)
        if new.notify_email is not None:
            _check_owner_mail_rate(ctx, account_id, new.notify_email)
    if row is None:
        row = AccountPreferences(account_id=account_id)
        ctx.session.add(row)
    row.notify_email = new.notify_email
    row.notify_email_confirmed = new.notify_email_confirmed
    row.expiry_thresholds = list(new.expiry_thresholds)
    row.weekly_enabled = new.weekly_enabled
    row.weekly_day = new.weekly_day
    row.weekly_time = new.weekly_time
    row.timezone = new.timezone
    row.alerts_enabled = new.alerts_enabled
    row.down_grace_minutes = new.down_grace_minutes
    row.updated_at = ctx.now
    ctx.session.flush()
    if address_changed and new.notify_email is not None:
        outbox.enqueue(
            ctx,
            kind="confirm_address",
            to_addr=new.notify_email,
            account_id=account_id,
            payload={"ip": ctx.ip, "at": ctx.now.isoformat()},
        )
        audit.record(ctx, "mail_confirm_address", account_id=account_id, subject=new.notify_email)
    audit.record(ctx, "preferences", account_id=account_id, detail=",".join(sorted(changes)))
    return new


def _check_owner_mail_rate(ctx: Ctx, account_id: int, recipient: str) -> None:
    since = ctx.now - timedelta(days=1)
    if audit.count_since(ctx, "mail_confirm_address", since, account_id=account_id) >= (
        OWNER_MAILS_PER_ACCOUNT_PER_DAY
    ):
        raise errors.rate_limited("too many confirmation mails from this account today; try again tomorrow")
    if audit.count_since(ctx, "mail_confirm_address", since, subject=recipient) >= (
        OWNER_MAILS_PER_RECIPIENT_PER_DAY
    ):
        raise errors.rate_limited("too many confirmation mails to this address today; try again tomorrow")


def confirm_address(ctx: Ctx, account_id: int, email: str) -> bool:
    """The override address answered its confirmation link (only if it is still the override)."""
    row = ctx.session.get(AccountPreferences, account_id)
    if row is None or row.notify_email != email:
        return False
    row.notify_email_confirmed = True
    audit.record(ctx, "address_confirmed", account_id=account_id, subject=email)
    return True


def recipient(account: Account, prefs: Preferences) -> str:
    """Where notifications go: the confirmed override, else the account's own address."""
    if prefs.notify_email and prefs.notify_email_confirmed:
        return prefs.notify_email
    return account.email
