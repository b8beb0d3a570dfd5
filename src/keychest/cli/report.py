"""`keychest report weekly`: queue weekly reports and send them now (cron users, tests)."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import click

from keychest.cli.options import (
    db_option,
    default_mail_domain,
    env_option,
    mail_options,
    mail_settings,
    print_json,
    resolve_db_url,
)
from keychest.config import Settings
from keychest.servers.mailer import Sender
from keychest.service import reports
from keychest.service.accounts import normalise_email
from keychest.service.errors import StorageUnavailable
from keychest.service.facade import Keychest


@click.group("report")
def report() -> None:
    """Reports mailed to account owners."""


@report.command("weekly")
@db_option
@click.option("--email", default=None, help="Only this account.")
@click.option(
    "--now",
    "now_flag",
    is_flag=True,
    default=False,
    help="Send regardless of each account's schedule (default: only reports due now).",
)
@env_option(
    "--mail-domain", default=None, help="Placeholder mail domain (never mailed). [default: this host's FQDN]"
)
@mail_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def weekly_cmd(
    db_url: str | None,
    data_dir: Path,
    email: str | None,
    now_flag: bool,
    mail_domain: str | None,
    smtp: str | None,
    smtp_user: str | None,
    smtp_password_file: str | None,
    smtp_starttls: bool,
    mail_from: str | None,
    public_url: str | None,
    as_json: bool,
) -> None:
    """Queue the weekly report of every confirmed account (or one) and send the outbox.

    Accounts with nothing to report (nothing expiring within 28 days, nothing renewed, no
    errors) get no mail. Other mails already due in the outbox are sent too.
    """
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    domain = (mail_domain or default_mail_domain()).lower().rstrip(".")
    settings = Settings(
        db_url=resolve_db_url(db_url, data_dir),
        data_dir=data_dir,
        mail_domain=domain,
        mail=mail_settings(
            smtp,
            smtp_user,
            smtp_password_file,
            smtp_starttls,
            mail_from,
            public_url,
            domain,
            "http://127.0.0.1:8080",
        ),
    )
    try:
        service = Keychest.open_admin(settings)  # never migrates (admin command)
    except StorageUnavailable as exc:
        raise click.ClickException(exc.text) from None
    try:
        wanted = normalise_email(email) if email else None
        outcomes = service.call(functools.partial(reports.weekly_pass, email=wanted, force=now_flag))
        sender = Sender(service)
        if settings.mail.smtp_host is not None:
            asyncio.run(sender.drain())
    finally:
        service.close()
    if as_json:
        print_json(
            {
                "reports": [
                    {"email": o.email, "period": o.period, "queued": o.queued, "reason": o.reason}
                    for o in outcomes
                ],
                "sent": sender.sent,
                "failed": sender.failed,
            }
        )
        return
    for outcome in outcomes:
        click.echo(f"{outcome.email}: {outcome.reason}")
    if email and not outcomes:
        click.echo(f"{email}: no confirmed account")
    if settings.mail.smtp_host is None:
        click.echo("no --smtp: queued reports wait in the outbox for `keychest serve`")
    else:
        click.echo(
            f"sent {sender.sent} mails" + (f", {sender.failed} failed (will retry)" if sender.failed else "")
        )
