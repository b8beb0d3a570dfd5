"""Retention (--retention): old rows that nothing reads any more are deleted, a batch at a
time, so the database stops growing for as long as the service runs.

What goes, once older than the retention period (database time):

- the audit log (quotas read the last hour or day; the retention is at least two days);
- scan history (scan_changes), except for each address its newest row and its newest row
  with a certificate (the recovery check compares against that one);
- sign-in and confirmation link tokens that expired;
- outbox rows that were sent or skipped (queued and failed ones stay).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, func, select, union

from keychest.service.context import Ctx
from keychest.service.scans import database_now
from keychest.states import MailState
from keychest.store.models import AuditEvent, OutboxMail, ScanChange, Token

# The shortest retention allowed: per-address and per-email quotas count a day back.
MIN_RETENTION_S = 2 * 86400.0


@dataclass(frozen=True)
class Pruned:
    audit: int
    history: int
    tokens: int
    outbox: int

    @property
    def total(self) -> int:
        return self.audit + self.history + self.tokens + self.outbox

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            self.audit + other.audit,
            self.history + other.history,
            self.tokens + other.tokens,
            self.outbox + other.outbox,
        )


def prune(ctx: Ctx, *, keep_s: float, batch: int = 5000) -> Pruned:
    """Delete up to ``batch`` old rows of each kind; call again while ``total`` is not 0."""
    cutoff = database_now(ctx) - timedelta(seconds=max(keep_s, MIN_RETENTION_S))
    newest = union(
        select(func.max(ScanChange.id)).group_by(ScanChange.endpoint_id, ScanChange.ip),
        select(func.max(ScanChange.id))
        .where(ScanChange.certificate_id.is_not(None))
        .group_by(ScanChange.endpoint_id, ScanChange.ip),
    )
    history = _delete(ctx, ScanChange, ScanChange.at < cutoff, ScanChange.id.not_in(newest), batch=batch)
    return Pruned(
        audit=_delete(ctx, AuditEvent, AuditEvent.at < cutoff, batch=batch),
        history=history,
        tokens=_delete(ctx, Token, Token.expires_at < cutoff, batch=batch),
        outbox=_delete(
            ctx,
            OutboxMail,
            OutboxMail.state.in_([MailState.SENT, MailState.SKIPPED]),
            OutboxMail.created_at < cutoff,
            batch=batch,
        ),
    )


PrunedRow = AuditEvent | ScanChange | Token | OutboxMail


def _delete(ctx: Ctx, model: type[PrunedRow], *where: ColumnElement[bool], batch: int) -> int:
    # By primary key, oldest first: two processes pruning at once take their row locks in the
    # same order (no deadlock), and one statement never holds the whole table.
    ids = list(ctx.session.scalars(select(model.id).where(*where).order_by(model.id).limit(batch)))
    if not ids:
        return 0
    ctx.session.execute(delete(model).where(model.id.in_(ids)))
    return len(ids)
