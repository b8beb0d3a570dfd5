"""Jinja2 rendering of mails: every kind has ``<kind>.txt`` and ``<kind>.html`` templates."""

from __future__ import annotations

import functools
import textwrap
import unicodedata
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

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


# Control characters and line/paragraph separators: a certificate's subject, issuer or SAN
# carrying one must not start a new line in a mail (a forged "Dashboard: https://evil" line).
_UNPRINTABLE = {"Cc", "Zl", "Zp"}


def printable(value: str) -> str:
    """Control characters shown escaped (``\n``, ``\x1b``, ``\u2028``); the rest unchanged."""
    if value.isprintable():
        return value
    out = []
    for ch in value:
        if unicodedata.category(ch) in _UNPRINTABLE:
            code = ord(ch)
            out.append(
                {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
                or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
            )
        else:
            out.append(ch)
    return "".join(out)


class _Laid(str):
    """Text whose line breaks the template made itself (see ``wrap``): not escaped again."""


def _finalize(value: Any) -> Any:
    # Every {{ value }} of every mail: templates cannot forget it. Markup (macros) and text
    # laid out by ``wrap`` carry the template's own line breaks.
    if isinstance(value, str) and not isinstance(value, Markup | _Laid):
        return printable(value)
    return value


def _wrap(value: Any, width: int = 76, indent: str = "") -> str:
    """Word-wrap (text parts): escapes control characters first, then breaks lines."""
    lines = textwrap.wrap(printable(str(value)), width, break_long_words=False, break_on_hyphens=False)
    return _Laid(("\n" + indent).join(lines))


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("keychest.notify", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,  # a missing value is a bug to see in tests, not a blank in a mail
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters["when"] = _when
    env.filters["day"] = _day
    env.filters["plural"] = _plural
    env.filters["wrap"] = _wrap
    return env


def render(kind: str, **context: Any) -> tuple[str, str]:
    """The plain-text and the HTML part of one mail."""
    env = environment()
    text = env.get_template(f"{kind}.txt").render(**context)
    html = env.get_template(f"{kind}.html").render(**context)
    return text, html
