"""`keychest client`: speak the line API from Python, as a bash client would."""

from __future__ import annotations

import sys

import click

from keychest.cli.options import env_option, print_json
from keychest.client import LineClient, LineReply, parse_server


def _run(server: str, as_json: bool, command: str, **args: str) -> None:
    host, port = parse_server(server)
    try:
        with LineClient(host, port) as client:
            reply = client.request(command, **args)
    except OSError as exc:
        raise click.ClickException(f"cannot reach {server}: {exc}") from None
    _print(reply, as_json)
    sys.exit(0 if reply.ok else 1)


def _print(reply: LineReply, as_json: bool) -> None:
    if as_json:
        print_json({"ok": reply.ok, "code": reply.code, "text": reply.text, "data": reply.data})
    elif reply.data is not None:
        click.echo(reply.data)
        click.echo(f"{reply.code} {reply.text}", err=True)
    else:
        click.echo(f"{reply.code} {reply.text}", err=not reply.ok)


@click.group()
@env_option("--server", default="127.0.0.1:10023", show_default=True, help="Line API HOST:PORT.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def client(ctx: click.Context, server: str, as_json: bool) -> None:
    """Talk to a keychest line API (exit 0 on ok, 1 on an error status)."""
    ctx.obj = (server, as_json)


@client.command()
@click.pass_obj
def apikey(obj: tuple[str, bool]) -> None:
    """Ask for a new API key (printed on stdout)."""
    _run(*obj, "apikey")


@client.command()
@click.argument("apikey")
@click.argument("email")
@click.pass_obj
def claim(obj: tuple[str, bool], apikey: str, email: str) -> None:
    """Bind APIKEY to EMAIL (a confirmation mail goes out)."""
    _run(*obj, "claim", apikey=apikey, email=email)


@client.command()
@click.argument("apikey")
@click.argument("domain")
@click.pass_obj
def add(obj: tuple[str, bool], apikey: str, domain: str) -> None:
    """Put DOMAIN[:PORT] under monitoring."""
    _run(*obj, "add", apikey=apikey, domain=domain)


@client.command()
@click.argument("apikey")
@click.argument("domain")
@click.pass_obj
def expiration(obj: tuple[str, bool], apikey: str, domain: str) -> None:
    """What the scanner knows of DOMAIN's certificate."""
    _run(*obj, "expiration", apikey=apikey, domain=domain)


@client.command()
@click.pass_obj
def ping(obj: tuple[str, bool]) -> None:
    """Check that the server answers."""
    _run(*obj, "ping")
