"""Alert channels: the rows, and how a channel becomes a delivery target.

The server-wide channels come from the flags (``--notify``, ``--webhook``); each process that
delivers or decides writes them as rows (``ensure_server``) so that outbox rows and the events
a channel got can point at them. Their webhook secret is never stored: it stays in the
process's settings (read from ``--webhook-secret-file``). A server-wide channel that is no
longer in the flags becomes ``removed``: its queued notifications are skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select, update

from keychest.config import Settings
from keychest.notify import deliver, events, signing
from keychest.service import errors, keys, secrets
from keychest.service.context import Ctx
from keychest.states import AccountState, KeyState
from keychest.store.models import Account, Channel

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
    secret: str | None = None  # a webhook's secret, redacted (whsec_...abcd)


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
    if channel.sealed is None:
        return None
    try:
        url, secret = _unseal(ctx, channel.sealed)
    except InvalidToken:  # the server secret changed: the channel must be set again
        return None
    return deliver.Target(channel.kind, url, secret)


# --- an account's channels (REST, dashboard) -------------------------------------------------------

SEVERITIES = ("warning", "critical")


def _fernet(ctx: Ctx) -> Fernet:
    raw = secrets.get_or_create(ctx, "channels")
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(("channels\n" + raw).encode()).digest()))


def _seal(ctx: Ctx, url: str, secret: str | None) -> str:
    return _fernet(ctx).encrypt(json.dumps({"url": url, "secret": secret}).encode()).decode()


def _unseal(ctx: Ctx, sealed: str) -> tuple[str, str | None]:
    data = json.loads(_fernet(ctx).decrypt(sealed.encode()))
    return str(data["url"]), data.get("secret")


@dataclass(frozen=True)
class NewChannel:
    kind: str
    url: str
    secret: str | None = None
    min_severity: str = "warning"
    event_types: tuple[str, ...] = ()


def check(new: NewChannel, *, allow_private_targets: bool) -> NewChannel:
    """The channel as it will be stored, or a 422 naming the problem. Resolves the URL's host
    (the private-address guard), so it runs outside any transaction. A webhook without a
    secret gets a new one (shown once, in the answer that creates the channel)."""
    if new.kind not in (deliver.APPRISE, deliver.WEBHOOK):
        raise errors.invalid("kind must be apprise or webhook")
    if new.min_severity not in SEVERITIES:
        raise errors.invalid("min_severity must be warning or critical")
    unknown = sorted(set(new.event_types) - set(events.EVENT_TYPES))
    if unknown:
        raise errors.invalid(f"unknown event types: {', '.join(unknown)}")
    if new.kind == deliver.APPRISE and new.secret is not None:
        raise errors.invalid("a secret belongs to a webhook; an Apprise URL carries its own credentials")
    if new.kind == deliver.WEBHOOK and new.secret is None:
        new = NewChannel(new.kind, new.url, signing.new_secret(), new.min_severity, new.event_types)
    target = deliver.Target(new.kind, new.url.strip(), new.secret)
    try:
        deliver.check_url(target)
        deliver.check_private(target, allow_private_targets)
    except deliver.ChannelUrlError as exc:
        raise errors.invalid(str(exc)) from None
    return new


def _account(ctx: Ctx, raw_key: str) -> Account:
    key = keys.use(ctx, raw_key)
    account = ctx.session.get(Account, key.account_id) if key.account_id is not None else None
    if key.state != KeyState.ACTIVE or account is None or account.state != AccountState.ACTIVE:
        raise errors.forbidden("alert channels need an approved key of a confirmed account")
    return account


def _view(row: Channel, secret: str | None = None) -> ChannelView:
    return ChannelView(
        row.id,
        row.account_id,
        row.kind,
        label(row.url),
        row.min_severity,
        tuple(row.event_types or ()),
        row.state,
        row.last_error,
        secret,
    )


@dataclass(frozen=True)
class Created:
    channel: ChannelView
    secret: str | None  # the webhook secret in full: this answer only


def _active(ctx: Ctx, account_id: int) -> Account:
    account = ctx.session.get(Account, account_id)
    if account is None or account.state != AccountState.ACTIVE:
        raise errors.forbidden("alert channels need a confirmed account")
    return account


def add(ctx: Ctx, raw_key: str, new: NewChannel) -> Created:
    """Store a channel :func:`check` accepted, for the key's account."""
    return add_for_account(ctx, _account(ctx, raw_key).id, new)


def add_for_account(ctx: Ctx, account_id: int, new: NewChannel) -> Created:
    """REST (through :func:`add`) and the dashboard's settings page store channels here."""
    account = _active(ctx, account_id)
    url = new.url.strip()
    ref = f"account:{account.id}:" + hashlib.sha256(f"{new.kind}\n{url}".encode()).hexdigest()[:60]
    row = ctx.session.scalar(select(Channel).where(Channel.ref == ref))
    if row is None:
        row = Channel(ref=ref, account_id=account.id, kind=new.kind, created_at=ctx.now, failures=0)
        ctx.session.add(row)
    row.url = label(url)
    row.sealed = _seal(ctx, url, new.secret)
    row.min_severity = new.min_severity
    row.event_types = list(new.event_types)
    row.state, row.last_error, row.paused_until = OK, None, None
    ctx.session.flush()
    redacted = signing.redact(new.secret) if new.secret else None
    return Created(_view(row, redacted), new.secret)


def for_key(ctx: Ctx, raw_key: str) -> list[ChannelView]:
    return for_account(ctx, _account(ctx, raw_key).id)


def for_account(ctx: Ctx, account_id: int) -> list[ChannelView]:
    account = _active(ctx, account_id)
    rows = ctx.session.scalars(
        select(Channel).where(Channel.account_id == account.id, Channel.state != REMOVED).order_by(Channel.id)
    )
    out = []
    for row in rows:
        secret = None
        if row.kind == deliver.WEBHOOK and row.sealed is not None:
            try:
                found = _unseal(ctx, row.sealed)[1]
            except InvalidToken:
                found = None
            secret = signing.redact(found) if found else None
        out.append(_view(row, secret))
    return out


def _own(ctx: Ctx, account_id: int, channel_id: int) -> Channel:
    account = _active(ctx, account_id)
    row = ctx.session.get(Channel, channel_id)
    if row is None or row.account_id != account.id or row.state == REMOVED:
        raise errors.not_found("no such channel")
    return row


def remove(ctx: Ctx, raw_key: str, channel_id: int) -> None:
    remove_for_account(ctx, _account(ctx, raw_key).id, channel_id)


def remove_for_account(ctx: Ctx, account_id: int, channel_id: int) -> None:
    """Its queued notifications are skipped; the events it got stay for the record."""
    row = _own(ctx, account_id, channel_id)
    row.state, row.sealed = REMOVED, None


def test_target(ctx: Ctx, raw_key: str, channel_id: int) -> deliver.Target:
    return test_target_for_account(ctx, _account(ctx, raw_key).id, channel_id)


def test_target_for_account(ctx: Ctx, account_id: int, channel_id: int) -> deliver.Target:
    target_ = target(ctx, _own(ctx, account_id, channel_id))
    if target_ is None:
        raise errors.invalid("this channel cannot be decrypted any more: set it again")
    return target_


def send_test(settings: Settings, target_: deliver.Target, now: datetime) -> deliver.Outcome:
    """REST's and the dashboard's "send a test" (deliver.send_test, with the server's settings)."""
    return deliver.send_test(
        target_,
        now=now,
        dashboard_url=settings.mail.public_url + "/",
        timeout_s=settings.notify.timeout_s,
        allow_private_targets=settings.scan.allow_private_targets,
    ).outcome


def list_all(ctx: Ctx) -> list[ChannelView]:
    return [_view(c) for c in ctx.session.scalars(select(Channel).order_by(Channel.id))]
