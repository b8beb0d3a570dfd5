"""`keychest hook`: install or print the certbot hook. Needs no database."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from keychest.hooks import HOOK_FILENAME, HookSettings, hook_text, parse_server, render_hook


def _settings(server: str | None, email: str | None) -> HookSettings | None:
    if server is None:
        if email is not None:
            raise click.UsageError("--email needs --server")
        return None
    try:
        host, port = parse_server(server)
        return HookSettings(host, port, email)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


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
@click.option("--name", default=HOOK_FILENAME, show_default=True, help="File name in DIR.")
def install_cmd(server: str, directory: Path, email: str | None, name: str) -> None:
    """Write the hook, configured and executable, into DIR."""
    settings = _settings(server, email)
    assert settings is not None
    if "/" in name or name in ("", ".", ".."):
        raise click.BadParameter("a plain file name", param_hint="--name")
    directory.mkdir(parents=True, exist_ok=True)
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
    click.echo(f"installed {target} (server {settings.host}:{settings.port})")


@hook.command("show")
@click.option("--server", default=None, metavar="HOST:PORT", help="Print it configured for this server.")
@click.option("--email", default=None, help="... and this account email.")
def show_cmd(server: str | None, email: str | None) -> None:
    """Print the hook (to save it by hand: keychest hook show --server H:P > keychest-hook.sh)."""
    settings = _settings(server, email)
    click.echo(render_hook(settings) if settings else hook_text(), nl=False)
