"""Options shared by several sub-commands; each is also read from KEYCHEST_<FLAG>."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from keychest.store.db import sqlite_url_for


def env_option(*decls: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option whose environment variable is KEYCHEST_<LONG FLAG> (e.g. KEYCHEST_DB)."""
    long_flag = next(d for d in decls if d.startswith("--"))
    envvar = "KEYCHEST_" + long_flag[2:].upper().replace("-", "_")
    kwargs.setdefault("show_envvar", True)
    return click.option(*decls, envvar=envvar, **kwargs)


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    func = env_option(
        "--db", "db_url", default=None, help="Database URL (default: SQLite in --data-dir)."
    )(func)
    return env_option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("data"),
        show_default=True,
        help="Folder for the embedded SQLite database.",
    )(func)


def resolve_db_url(db_url: str | None, data_dir: Path) -> str:
    if db_url:
        return db_url
    data_dir.mkdir(parents=True, exist_ok=True)
    return sqlite_url_for(data_dir)


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
