"""Admin commands that read the database directly (through the service layer)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from keychest.cli.options import db_option, print_json, resolve_db_url
from keychest.config import MailSettings, Settings
from keychest.service import accounts, domains, keys, outbox
from keychest.service.context import Ctx
from keychest.service.errors import ServiceError, StorageUnavailable
from keychest.service.facade import Keychest


def open_service(db_url: str | None, data_dir: Path, *, public_url: str | None = None) -> Keychest:
    # Never migrates: an admin command run with an older or newer keychest than the database's
    # says so in one line instead of changing (or failing on) the schema.
    mail = MailSettings(public_url=public_url.rstrip("/")) if public_url else MailSettings()
    settings = Settings(db_url=resolve_db_url(db_url, data_dir), data_dir=data_dir, mail_domain="", mail=mail)
    try:
        return Keychest.open_admin(settings)
    except StorageUnavailable as exc:
        raise click.ClickException(exc.text) from None


# Wider than any row: piped output (| grep, > file) is for reading whole values, never cut.
PIPED_WIDTH = 100_000


def _table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    table = Table(title=title)
    for column in columns:
        # On a terminal too narrow for a value, wrap it rather than cut it with an ellipsis.
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console = Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
    console.print(table)


def _iso(value: object) -> object:
    return value.isoformat() + "Z" if hasattr(value, "isoformat") and value is not None else value


@click.command("domains")
@db_option
@click.option("--apikey", default=None, help="Only the domains registered with this key.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def domains_cmd(db_url: str | None, data_dir: Path, apikey: str | None, as_json: bool) -> None:
    """List registered domains with their account."""
    service = open_service(db_url, data_dir)
    try:
        rows = service.read(lambda ctx: domains.list_rows(ctx, raw_key=apikey))
    except ServiceError as exc:
        raise click.ClickException(exc.text) from None
    if as_json:
        print_json([{**asdict(r), "added_at": _iso(r.added_at)} for r in rows])
        return
    _table(
        f"{len(rows)} domains",
        ["domain", "account", "key", "key state", "added"],
        [[r.domain, r.account_email, r.apikey_prefix, r.key_state, _iso(r.added_at)] for r in rows],
    )


@click.command("keys")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def keys_cmd(db_url: str | None, data_dir: Path, as_json: bool) -> None:
    """List API keys (never the keys themselves: only their first characters)."""
    service = open_service(db_url, data_dir)

    def load(ctx: Ctx) -> list[dict[str, object]]:
        emails = {a.id: a.email for a in accounts.list_summaries(ctx)}
        return [
            {
                "id": k.id,
                "prefix": k.prefix,
                "state": k.state,
                "account_email": emails.get(k.account_id) if k.account_id else None,
                "created_at": _iso(k.created_at),
                "created_ip": k.created_ip,
                "claimed_at": _iso(k.claimed_at),
                "last_used_at": _iso(k.last_used_at),
                "last_used_ip": k.last_used_ip,
                "revoked_at": _iso(k.revoked_at),
            }
            for k in keys.list_all(ctx)
        ]

    rows = service.read(load)
    if as_json:
        print_json(rows)
        return
    cols = ["prefix", "state", "account_email", "created_ip", "created_at", "last_used_at"]
    _table(f"{len(rows)} API keys", cols, [[r[c] for c in cols] for r in rows])


@click.command("accounts")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def accounts_cmd(db_url: str | None, data_dir: Path, as_json: bool) -> None:
    """List accounts: email, state (dormant/active/blocked), keys and domains."""
    service = open_service(db_url, data_dir)
    rows = [asdict(a) for a in service.read(accounts.list_summaries)]
    if as_json:
        print_json(rows)
        return
    cols = ["email", "state", "is_placeholder", "keys", "domains", "created_at"]
    _table(f"{len(rows)} accounts", cols, [[r[c] for c in cols] for r in rows])


@click.command("outbox")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def outbox_cmd(db_url: str | None, data_dir: Path, as_json: bool) -> None:
    """List mails and channel notifications: queued, sent, failed, skipped."""
    service = open_service(db_url, data_dir)
    rows = [
        {
            "id": m.id,
            "kind": m.kind,
            # mail, or the alert channel (id) a notification goes to; "to" then shows its URL
            "channel": "mail" if m.channel_id is None else f"channel {m.channel_id}",
            "to": m.to_addr,
            "state": m.state,
            "attempts": m.attempts,
            "created_at": _iso(m.created_at),
            "sent_at": _iso(m.sent_at),
            "last_error": m.last_error,
        }
        for m in service.read(outbox.list_all)
    ]
    if as_json:
        print_json(rows)
        return
    cols = ["id", "kind", "channel", "to", "state", "attempts", "created_at", "sent_at", "last_error"]
    _table(f"{len(rows)} mails", cols, [[r[c] for c in cols] for r in rows])
