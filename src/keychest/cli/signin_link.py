"""`keychest signin-link EMAIL`: a one-time dashboard sign-in URL, printed instead of mailed."""

from __future__ import annotations

from pathlib import Path

import click

from keychest.cli.admin import open_service
from keychest.cli.options import db_option, env_option, parse_listen
from keychest.service import links
from keychest.service.errors import ServiceError


@click.command("signin-link")
@db_option
@env_option(
    "--public-url",
    default=None,
    help="The dashboard's address as users reach it. [default: http://HTTP-LISTEN]",
)
@env_option("--http-listen", default="127.0.0.1:8080", show_default=True, help="The server's HTTP HOST:PORT.")
@click.argument("email")
def signin_link(
    db_url: str | None, data_dir: Path, public_url: str | None, http_listen: str, email: str
) -> None:
    """Print a sign-in link for EMAIL's account: works once, within 15 minutes.

    For installs without a mail server (or a lost mail). Open it in a browser and press the
    button, as with a mailed link. An account whose confirmation mail never went out gets a
    link that confirms it and signs in.
    """
    if public_url is None:
        host, port = parse_listen(http_listen, "127.0.0.1")
        # A wildcard listener is reached on loopback from this machine.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        public_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    service = open_service(db_url, data_dir, public_url=public_url)
    try:
        link = service.call(links.admin_signin_link, email)
    except ServiceError as exc:
        raise click.ClickException(exc.text) from None
    finally:
        service.db.dispose()
    click.echo(link.url)
    if link.confirms:
        click.echo(f"{link.email} was not confirmed yet: this link confirms the account too.", err=True)
