"""Header values that must reach the recipient exactly as written.

RFC 8058 one-click unsubscribe needs ``List-Unsubscribe: <https://...>`` as plain text; the
standard library folds any header line longer than 78 characters, and a URL has no space to
fold at, so it turns the whole value into RFC 2047 encoded-words (``=?utf-8?q?=3Chttps...``),
which mail providers do not read as a URL. These headers are stored as values that write
themselves unchanged, whatever policy the SMTP client flattens the message with.
"""

from __future__ import annotations

from email.policy import EmailPolicy
from typing import Any

VERBATIM = frozenset({"list-unsubscribe", "list-unsubscribe-post"})
# RFC 5322: a line is at most 998 characters.
MAX_LINE = 998


class VerbatimHeader(str):
    """A header value that folds to ``Name: value`` on one line, never encoded."""

    name: str
    defects: tuple[()] = ()

    def __new__(cls, name: str, value: str) -> VerbatimHeader:
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: Any) -> str:
        return f"{self.name}: {self}{policy.linesep}"


def writable_verbatim(name: str, value: str) -> bool:
    return (
        name.lower() in VERBATIM
        and value.isascii()
        and value.isprintable()  # no CR, LF or other control character: no header injection
        and len(name) + 2 + len(value) <= MAX_LINE
    )


class MailPolicy(EmailPolicy):
    """The default policy, but VERBATIM headers keep their value as written."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if isinstance(value, str) and not hasattr(value, "name") and writable_verbatim(name, value):
            return (name, VerbatimHeader(name, value))
        return super().header_store_parse(name, value)


MAIL_POLICY = MailPolicy()
