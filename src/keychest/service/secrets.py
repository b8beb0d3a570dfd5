"""Installation-wide secrets (cookie signing), made once and shared by every process."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from keychest.service.context import Ctx
from keychest.store.models import ServerSecret


def get_or_create(ctx: Ctx, name: str) -> str:
    value = ctx.session.scalar(select(ServerSecret.value).where(ServerSecret.name == name))
    if value is not None:
        return value
    fresh = secrets.token_urlsafe(32)
    try:
        with ctx.session.begin_nested():
            ctx.session.add(ServerSecret(name=name, value=fresh, created_at=ctx.now))
    except IntegrityError:  # another process made it first: use theirs
        return ctx.session.execute(select(ServerSecret.value).where(ServerSecret.name == name)).scalar_one()
    return fresh
