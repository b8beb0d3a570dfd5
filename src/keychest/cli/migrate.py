"""`keychest migrate`: apply the schema migrations, or roll back to a revision (--to)."""

from __future__ import annotations

from pathlib import Path

import click

from keychest.cli.options import db_option, resolve_db_url
from keychest.config import Settings
from keychest.service.errors import StorageUnavailable
from keychest.service.facade import Keychest


@click.command()
@db_option
@click.option(
    "--to",
    "revision",
    default="head",
    show_default=True,
    help="Revision to bring the schema to; an older one rolls back (see docs/deploy.md). "
    "Back up the database first.",
)
def migrate(db_url: str | None, data_dir: Path, revision: str) -> None:
    """Upgrade the database schema to this keychest's (or roll it back with --to REVISION)."""
    settings = Settings(db_url=resolve_db_url(db_url, data_dir), data_dir=data_dir, mail_domain="")
    try:
        before, after = Keychest.migrate_schema(settings, revision)
    except StorageUnavailable as exc:
        raise click.ClickException(exc.text) from None
    if before == after:
        click.echo(f"database is at {after or 'base'}; nothing to do")
    else:
        click.echo(f"database migrated from {before or 'empty'} to {after or 'base'}")
