"""Which servers are held now (a snooze or maintenance window): mail and every channel leave
their events waiting. Its own module because both alert passes (service.alerting for mail,
service.incidents for channels) ask, and incidents builds on alerting."""

from __future__ import annotations

from sqlalchemy import or_, select

from keychest.notify.events import Hold
from keychest.service.context import Ctx
from keychest.store.models import NotifyHold


def held_endpoints(ctx: Ctx, endpoint_ids: list[int]) -> frozenset[int]:
    rows = ctx.session.execute(
        select(NotifyHold.endpoint_id, NotifyHold.starts_at, NotifyHold.ends_at, NotifyHold.weekly).where(
            or_(NotifyHold.weekly.is_(True), NotifyHold.ends_at > ctx.now)
        )
    )
    wanted = set(endpoint_ids)
    return frozenset(
        endpoint_id
        for endpoint_id, starts_at, ends_at, weekly in rows
        if endpoint_id in wanted and Hold(starts_at, ends_at, weekly).active(ctx.now)
    )
