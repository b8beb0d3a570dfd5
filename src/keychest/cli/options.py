"""Options shared by several sub-commands; each is also read from KEYCHEST_<FLAG>."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from keychest.config import MailSettings
from keychest.store.db import sqlite_url_for


def env_option(*decls: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option whose environment variable is KEYCHEST_<LONG FLAG> (e.g. KEYCHEST_DB)."""
    long_flag = next(d for d in decls if d.startswith("--"))
    envvar = "KEYCHEST_" + long_flag[2:].upper().replace("-", "_")
    kwargs.setdefault("show_envvar", True)
    return click.option(*decls, envvar=envvar, **kwargs)


def _read_db_password(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    # Kept out of the command's arguments: resolve_db_url puts it into the URL.
    if value:
        password = Path(value).read_text().strip()
        if not password:
            raise click.BadParameter(f"{value} is empty", param_hint="--db-password-file")
        ctx.meta["keychest.db_password"] = password


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    func = env_option(
        "--db-password-file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        expose_value=False,
        callback=_read_db_password,
        help="File holding the password of the --db URL's user (kept out of the URL, the process "
        "list and the environment).",
    )(func)
    func = env_option("--db", "db_url", default=None, help="Database URL (default: SQLite in --data-dir).")(
        func
    )
    return env_option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("data"),
        show_default=True,
        help="Folder for the embedded SQLite database.",
    )(func)


def resolve_db_url(db_url: str | None, data_dir: Path) -> str:
    context = click.get_current_context(silent=True)
    password = context.meta.get("keychest.db_password") if context is not None else None
    if db_url and password:
        return with_password(db_url, password)
    if db_url:
        return db_url
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(
            f"cannot create the data directory {data_dir} (--data-dir): {exc.strerror}"
        ) from None
    return sqlite_url_for(data_dir)


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` for its user (replacing any password it had)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise click.BadParameter(
            "--db-password-file needs a --db URL with a user, e.g. postgresql://keychest@db/keychest"
        )
    netloc, slash, tail = rest.partition("/")
    credentials, at, host = netloc.rpartition("@")
    if not at:
        raise click.BadParameter(
            "--db-password-file needs a user in the --db URL (postgresql://USER@HOST/DB)"
        )
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}{slash}{tail}"


def parse_listen(text: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host, int(port)
    host, sep, port = text.rpartition(":")
    if not sep:
        return default_host, int(text)
    try:
        return host or default_host, int(port)
    except ValueError:
        raise click.BadParameter(f"expected HOST:PORT, got {text!r}") from None


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`30s`, `15m`, `6h`, `1d`, or plain seconds."""
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise click.BadParameter(f"expected a duration like 30s, 15m, 6h or 1d, got {text!r}") from None
    if value <= 0:
        raise click.BadParameter("a duration must be positive")
    return value


def default_mail_domain() -> str:
    fqdn = socket.getfqdn()
    return fqdn if "." in fqdn and not fqdn.endswith(".localdomain") else "keychest.invalid"


def mail_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The mail flags `serve` and `report weekly` share; see :func:`mail_settings`."""
    options = [
        env_option(
            "--smtp", default=None, help="SMTP server HOST:PORT (unset: mails stay queued in the outbox)."
        ),
        env_option("--smtp-user", default=None, help="SMTP user name."),
        env_option(
            "--smtp-password-file",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="File holding the SMTP password (kept out of the process list).",
        ),
        env_option("--smtp-starttls", is_flag=True, default=False, help="Use STARTTLS with the SMTP server."),
        env_option(
            "--mail-from", default=None, help="From: address of every mail. [default: keychest@MAIL-DOMAIN]"
        ),
        env_option(
            "--public-url",
            default=None,
            help="The dashboard's address as users reach it, for links in mails. [default: http://HTTP-LISTEN]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def mail_settings(
    smtp: str | None,
    user: str | None,
    password_file: str | None,
    starttls: bool,
    mail_from: str | None,
    public_url: str | None,
    mail_domain: str,
    default_public_url: str,
) -> MailSettings:
    """MailSettings from the flags of :func:`mail_options`."""
    host, port = parse_listen(smtp, "127.0.0.1") if smtp else (None, 25)
    password = Path(password_file).read_text().strip() if password_file else None
    return MailSettings(
        smtp_host=host,
        smtp_port=port,
        smtp_user=user,
        smtp_password=password,
        smtp_starttls=starttls,
        mail_from=mail_from or f"keychest@{mail_domain}",
        public_url=(public_url or default_public_url).rstrip("/"),
    )
