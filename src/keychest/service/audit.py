"""The audit log: who did what to which key, from where."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select

from keychest.service.context import Ctx
from keychest.store.models import AuditEvent


def record(
    ctx: Ctx,
    event: str,
    *,
    api_key_id: int | None = None,
    account_id: int | None = None,
    subject: str | None = None,
    detail: str | None = None,
) -> None:
    ctx.session.execute(
        insert(AuditEvent).values(
            at=ctx.now,
            event=event,
            ip=ctx.ip,
            api_key_id=api_key_id,
            account_id=account_id,
            subject=subject,
            detail=detail,
        )
    )


def record_many(ctx: Ctx, rows: list[dict[str, object]]) -> None:
    """Many events at once; each row has the keyword arguments of :func:`record` plus ``ip``."""
    if rows:
        ctx.session.execute(
            # Core, not ORM: one executemany of plain rows.
            insert(AuditEvent.__table__),
            [
                {
                    "at": ctx.now,
                    "event": row["event"],
                    "ip": row.get("ip"),
                    "api_key_id": row.get("api_key_id"),
                    "account_id": row.get("account_id"),
                    "subject": row.get("subject"),
                    "detail": row.get("detail"),
                }
                for row in rows
            ],
        )


def recent(ctx: Ctx, *, limit: int = 100) -> list[AuditEvent]:
    rows = ctx.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
    return list(rows)


def count_since(
    ctx: Ctx,
    event: str,
    since: datetime,
    *,
    subject: str | None = None,
    account_id: int | None = None,
) -> int:
    """How many ``event`` rows since a moment (for one subject and/or account): quotas."""
    query = (
        select(func.count()).select_from(AuditEvent).where(AuditEvent.event == event, AuditEvent.at >= since)
    )
    if subject is not None:
        query = query.where(AuditEvent.subject == subject)
    if account_id is not None:
        query = query.where(AuditEvent.account_id == account_id)
    return int(ctx.session.scalar(query) or 0)
