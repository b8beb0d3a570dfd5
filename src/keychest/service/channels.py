"""Alert channels: the rows, and how a channel becomes a delivery target.

The server-wide channels come from the flags (``--notify``, ``--webhook``); each process that
delivers or decides writes them as rows (``ensure_server``) so that outbox rows and the events
a channel got can point at them. Their webhook secret is never stored: it stays in the
process's settings (read from ``--webhook-secret-file``). A server-wide channel that is no
longer in the flags becomes ``removed``: its queued notifications are skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import select, update

from keychest.notify import deliver
from keychest.service.context import Ctx
from keychest.store.models import Channel

OK = "ok"
FAILING = "failing"  # the receiver refused (4xx): last_error holds its answer
REMOVED = "removed"
SERVER = "server:"


@dataclass(frozen=True)
class ChannelView:
    id: int
    account_id: int | None
    kind: str
    label: str  # the URL without credentials: what lists show
    min_severity: str
    event_types: tuple[str, ...]
    state: str
    last_error: str | None


def server_ref(kind: str, url: str) -> str:
    return SERVER + hashlib.sha256(f"{kind}\n{url}".encode()).hexdigest()[:64]


def server_targets(ctx: Ctx) -> list[deliver.Target]:
    notify = ctx.settings.notify
    return [deliver.Target(deliver.APPRISE, url) for url in notify.apprise_urls] + [
        deliver.Target(deliver.WEBHOOK, url, notify.webhook_secret) for url in notify.webhook_urls
    ]


def label(url: str) -> str:
    """The URL as lists may show it: no user or password (tokens in Apprise paths stay cut)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url[:60]
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/..." if "/" in rest else f"{scheme}://{host}"


def ensure_server(ctx: Ctx) -> list[int]:
    """The ids of the server-wide channels the settings name, created when new."""
    wanted = {server_ref(t.kind, t.url): t for t in server_targets(ctx)}
    existing = {c.ref: c for c in ctx.session.scalars(select(Channel).where(Channel.ref.like(SERVER + "%")))}
    ids = []
    for ref, target in wanted.items():
        row = existing.get(ref)
        if row is None:
            row = Channel(
                ref=ref,
                account_id=None,
                kind=target.kind,
                url=target.url,
                min_severity="warning",
                event_types=[],
                created_at=ctx.now,
                state=OK,
                failures=0,
            )
            ctx.session.add(row)
            ctx.session.flush()
        elif row.state == REMOVED:
            row.state = OK
        ids.append(row.id)
    gone = [c.id for ref, c in existing.items() if ref not in wanted and c.state != REMOVED]
    if gone:
        ctx.session.execute(update(Channel).where(Channel.id.in_(gone)).values(state=REMOVED))
    return ids


def target(ctx: Ctx, channel: Channel) -> deliver.Target | None:
    """Where to deliver for this channel; None when this process does not know it (removed)."""
    if channel.state == REMOVED:
        return None
    if channel.account_id is None:
        for candidate in server_targets(ctx):
            if server_ref(candidate.kind, candidate.url) == channel.ref:
                return candidate
        return None
    return deliver.Target(channel.kind, channel.url)


def list_all(ctx: Ctx) -> list[ChannelView]:
    return [
        ChannelView(
            c.id,
            c.account_id,
            c.kind,
            label(c.url),
            c.min_severity,
            tuple(c.event_types or ()),
            c.state,
            c.last_error,
        )
        for c in ctx.session.scalars(select(Channel).order_by(Channel.id))
    ]
