"""Process heartbeats: every keychest process (api, scanner, mailer, on any machine) writes
one row every few seconds, so that any API node's /metrics shows a dead scanner.

Times are the database's (scans.database_now): ages compare rows written by different
machines, whose clocks may disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from keychest.service.context import Ctx
from keychest.service.scans import database_now
from keychest.store.models import Heartbeat

# Rows of processes not heard from for this long are deleted (restarts leave one row each).
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class ProcessInfo:
    role: str
    host: str
    pid: int
    version: str

    @property
    def id(self) -> str:
        return f"{self.role}:{self.host}:{self.pid}"


@dataclass(frozen=True)
class HeartbeatView:
    role: str
    host: str
    pid: int
    version: str
    age_s: float  # since the last heartbeat
    pass_age_s: float | None  # since the main loop's last pass; None: none yet


def beat(ctx: Ctx, process: ProcessInfo, pass_age_s: float | None) -> None:
    """Record that ``process`` is alive, its loop's last pass ``pass_age_s`` seconds ago."""
    now = database_now(ctx)
    last_pass = None if pass_age_s is None else now - timedelta(seconds=pass_age_s)
    row = ctx.session.get(Heartbeat, process.id)
    if row is None:
        ctx.session.add(
            Heartbeat(
                id=process.id,
                role=process.role,
                host=process.host,
                pid=process.pid,
                version=process.version,
                started_at=now,
                seen_at=now,
                last_pass_at=last_pass,
            )
        )
        ctx.session.execute(delete(Heartbeat).where(Heartbeat.seen_at < now - FORGET_AFTER))
        return
    row.seen_at = now
    row.last_pass_at = last_pass


def heartbeats(ctx: Ctx) -> list[HeartbeatView]:
    now = database_now(ctx)
    rows = ctx.session.scalars(select(Heartbeat).order_by(Heartbeat.role, Heartbeat.host, Heartbeat.pid))
    return [
        HeartbeatView(
            role=row.role,
            host=row.host,
            pid=row.pid,
            version=row.version,
            age_s=_seconds(now, row.seen_at),
            pass_age_s=None if row.last_pass_at is None else _seconds(now, row.last_pass_at),
        )
        for row in rows
    ]


def _seconds(now: datetime, then: datetime) -> float:
    return max(0.0, (now - then).total_seconds())
