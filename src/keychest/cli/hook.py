"""`keychest hook`: install or print the certbot hook. Needs no database."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from keychest.hooks import HOOK_FILENAME, HookSettings, hook_text, parse_server, render_hook


def _settings(
    server: str | None, email: str | None, tls: bool, pin: str | None, ca_file: str | None
) -> HookSettings | None:
    if server is None:
        if email is not None or tls or pin is not None or ca_file is not None:
            raise click.UsageError("--email, --tls, --pin and --ca-file need --server")
        return None
    if pin is not None and ca_file is not None:
        raise click.UsageError("--pin or --ca-file: the server is known by one of them")
    try:
        host, port = parse_server(server)
        return HookSettings(host, port, email, tls, pin, ca_file)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _transport_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """TLS settings written into the hook (docs/hook.md, "TLS")."""
    for option in reversed(
        [
            click.option(
                "--tls",
                is_flag=True,
                help="Talk TLS (keychest serve --line-tls-listen), trusting the system's CAs.",
            ),
            click.option(
                "--pin",
                default=None,
                metavar="sha256//BASE64",
                help="Trust only this server public key (implies --tls).",
            ),
            click.option(
                "--ca-file",
                default=None,
                metavar="FILE",
                help="Trust the server's certificate for its name from this CA (implies --tls).",
            ),
        ]
    ):
        command = option(command)
    return command


@click.group()
def hook() -> None:
    """The certbot hook that registers renewed domains (bash only, no curl)."""


@hook.command("install")
@click.option("--server", required=True, metavar="HOST:PORT", help="The keychest line API (port 10023).")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write it, e.g. /etc/letsencrypt/renewal-hooks/post (or .../deploy).",
)
@click.option("--email", default=None, help="Account email; default: the Let's Encrypt account's.")
@_transport_options
@click.option("--name", default=HOOK_FILENAME, show_default=True, help="File name in DIR.")
def install_cmd(
    server: str,
    directory: Path,
    email: str | None,
    tls: bool,
    pin: str | None,
    ca_file: str | None,
    name: str,
) -> None:
    """Write the hook, configured and executable, into DIR."""
    settings = _settings(server, email, tls, pin, ca_file)
    assert settings is not None
    if "/" in name or name in ("", ".", ".."):
        raise click.BadParameter("a plain file name", param_hint="--name")
    # Only the last folder is made: a missing parent means a mistyped path or no certbot here
    # (renewal-hooks/ comes with certbot), and a hook nobody runs would watch nothing.
    if not directory.is_dir():
        if not directory.parent.is_dir():
            raise click.BadParameter(
                f"{directory.parent} does not exist: is certbot's folder right "
                "(usually /etc/letsencrypt/renewal-hooks/post)?",
                param_hint="--dir",
            )
        directory.mkdir()
    target = directory / name
    # Written beside the target and renamed: certbot may run hooks at any moment and must
    # never find a half-written one.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(render_hook(settings))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    transport = "TLS" if settings.tls or settings.pin or settings.ca_file else "plain TCP"
    click.echo(f"installed {target} (server {settings.host}:{settings.port}, {transport})")
    click.echo(f"now run it once to register the certificates certbot already has: {target} all")


@hook.command("show")
@click.option("--server", default=None, metavar="HOST:PORT", help="Print it configured for this server.")
@click.option("--email", default=None, help="... and this account email.")
@_transport_options
def show_cmd(server: str | None, email: str | None, tls: bool, pin: str | None, ca_file: str | None) -> None:
    """Print the hook (to save it by hand: keychest hook show --server H:P > keychest-hook.sh)."""
    settings = _settings(server, email, tls, pin, ca_file)
    click.echo(render_hook(settings) if settings else hook_text(), nl=False)
