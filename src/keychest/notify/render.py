"""Jinja2 rendering of mails: every kind has ``<kind>.txt`` and ``<kind>.html`` templates."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

KINDS = (
    "confirm_account",
    "approve_key",
    "reopen_account",
    "signin",
    "confirm_address",
    "alerts",
    "weekly",
)


def _when(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _day(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d")


def _plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else many or word + 's'}"


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("keychest.notify", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,  # a missing value is a bug to see in tests, not a blank in a mail
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["when"] = _when
    env.filters["day"] = _day
    env.filters["plural"] = _plural
    return env


def render(kind: str, **context: Any) -> tuple[str, str]:
    """The plain-text and the HTML part of one mail."""
    env = environment()
    text = env.get_template(f"{kind}.txt").render(**context)
    html = env.get_template(f"{kind}.html").render(**context)
    return text, html
