"""The audit log: who did what to which key, from where."""

from __future__ import annotations

from sqlalchemy import insert, select

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


def recent(ctx: Ctx, *, limit: int = 100) -> list[AuditEvent]:
    rows = ctx.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
    return list(rows)
