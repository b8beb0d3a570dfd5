"""`keychest rescan`: make endpoints due now; a running `keychest serve` scans them within seconds."""

from __future__ import annotations

from pathlib import Path

import click

from keychest.cli.admin import open_service
from keychest.cli.options import db_option
from keychest.service import scans
from keychest.service.errors import ServiceError


@click.command("rescan")
@db_option
@click.option("--all", "everything", is_flag=True, help="Every monitored endpoint.")
@click.option(
    "--state",
    type=click.Choice(scans.RESCAN_STATES),
    default=None,
    help="The endpoints whose last scan ended in this state.",
)
@click.argument("domains", nargs=-1, metavar="[DOMAIN[:port]]...")
def rescan(
    db_url: str | None, data_dir: Path, everything: bool, state: str | None, domains: tuple[str, ...]
) -> None:
    """Scan endpoints again now instead of at their interval (after a renewal or a fix).

    Give --all, --state STATE, or domains (port 443 unless given). A running `keychest serve`
    on the same database scans them within seconds; the command itself scans nothing.
    """
    if sum((everything, state is not None, bool(domains))) != 1:
        raise click.UsageError("give exactly one of --all, --state STATE, or DOMAIN[:port]...")
    service = open_service(db_url, data_dir)
    try:
        report = service.call(
            lambda ctx: scans.rescan(ctx, everything=everything, state=state, domain_texts=domains)
        )
    except ServiceError as exc:
        raise click.ClickException(exc.text) from None
    finally:
        service.db.dispose()
    for name in report.unknown:
        click.echo(f"not monitored: {name}", err=True)
    noun = "endpoint" if report.marked == 1 else "endpoints"
    click.echo(
        f"scan scheduled for {report.marked} {noun}; a running keychest serve scans them within seconds"
    )
    if report.unknown:
        raise SystemExit(1)
