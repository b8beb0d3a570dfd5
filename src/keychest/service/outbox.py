"""The durable outbox: mails are rows written in the transaction of their cause."""

from __future__ import annotations

from sqlalchemy import insert, select

from keychest.service.context import Ctx
from keychest.store.models import OutboxMail


def enqueue(ctx: Ctx, *, kind: str, to_addr: str, account_id: int | None, payload: dict) -> None:
    ctx.session.execute(
        insert(OutboxMail).values(
            created_at=ctx.now,
            kind=kind,
            to_addr=to_addr,
            account_id=account_id,
            payload=payload,
            state="queued",
            attempts=0,
            next_attempt_at=ctx.now,
        )
    )


def list_all(ctx: Ctx, *, limit: int = 1000) -> list[OutboxMail]:
    return list(ctx.session.scalars(select(OutboxMail).order_by(OutboxMail.id.desc()).limit(limit)))
