"""The line API of docs/protocol.md as pure functions: bytes in, requests out; responses to bytes.

Nothing here does I/O or looks at a clock, so every rule can be tested on bytes alone
(see tests/protocol). The asyncio shell in ``keychest.servers.line`` feeds received bytes
to a :class:`LineFramer` and writes what :func:`format_response` returns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# Tab is whitespace between tokens; every other control character is refused.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# A request line, without its newline, may be this long. Generous for a domain (253
# characters) plus a key and an email, small enough that a flood costs little memory.
MAX_LINE_BYTES = 1024

# Responses stay well under the 1000 bytes a single `dd bs=1000 count=1` reads.
MAX_RESPONSE_BYTES = 900
# A status line's human-readable text; the data line gets the rest of the room.
MAX_STATUS_TEXT = 200


@dataclass(frozen=True)
class CommandSpec:
    name: str
    required: tuple[str, ...]
    summary: str


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("apikey", (), "command apikey"),
        CommandSpec("claim", ("apikey", "email"), "command claim apikey K email E"),
        CommandSpec("add", ("apikey", "domain"), "command add apikey K domain D[:port]"),
        CommandSpec("expiration", ("apikey", "domain"), "command expiration apikey K domain D[:port]"),
        CommandSpec(
            "renewal",
            ("apikey", "domain", "status"),
            "command renewal apikey K domain D status S [sha256 H] [host N]",
        ),
        CommandSpec("ping", (), "command ping"),
        CommandSpec("maildomain", (), "command maildomain"),
        CommandSpec("help", (), "command help"),
    )
}


@dataclass(frozen=True)
class Request:
    command: str
    args: Mapping[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str:
        return self.args[key]


@dataclass(frozen=True)
class Response:
    code: int
    text: str
    data: str | None = None

    @property
    def ok(self) -> bool:
        return self.code < 400


class LineError(Exception):
    """A request the server answers with an error status instead of passing it on."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    def response(self) -> Response:
        return Response(self.code, self.text)


def parse_request(line: bytes) -> Request | None:
    """Parse one request line (its newline already removed). None for a blank line.

    Raises LineError for what the server must refuse: not text, an odd number of tokens,
    a repeated key, a missing or unknown command or a missing required key.
    """
    if len(line) > MAX_LINE_BYTES:
        raise LineError(413, f"line too long (max {MAX_LINE_BYTES} bytes)")
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise LineError(400, "request must be ASCII text (use IDNA A-labels for domains)") from None
    if _CONTROL.search(text):
        raise LineError(400, "request contains control characters")
    tokens = text.split()
    if not tokens:
        return None
    if len(tokens) % 2:
        raise LineError(400, f"odd number of tokens: a request is key value pairs; {_example(tokens)}")
    args: dict[str, str] = {}
    for key, value in zip(tokens[::2], tokens[1::2], strict=True):
        key = key.lower()
        if key in args:
            raise LineError(400, f"key {key} given twice")
        args[key] = value
    command = args.pop("command", None)
    if command is None:
        raise LineError(400, f"missing key command; {_example(tokens)}")
    command = command.lower()
    spec = COMMANDS.get(command)
    if spec is None:
        raise LineError(404, f"unknown command {_printable(command)}; try: command help")
    for key in spec.required:
        if key not in args:
            raise LineError(400, f"missing key {key}: {spec.summary}")
    return Request(command, args)


def format_response(response: Response) -> bytes:
    """The whole answer to one request: an optional data line, then one status line.

    Texts are cut to fit, so that every answer stays within MAX_RESPONSE_BYTES and one
    `dd bs=1000 count=1` read gets all of it, whatever a caller passes.
    """
    word = "ok" if response.ok else "error"
    text = _one_line(response.text)[:MAX_STATUS_TEXT]
    status = f"status {word} {response.code} {text}\n"
    if response.data is None:
        out = status
    else:
        room = MAX_RESPONSE_BYTES - len(status) - len("data \n")
        out = f"data {_one_line(response.data)[:room]}\n{status}"
    # ASCII with "?" for anything else: one byte per character, so the cuts above hold.
    return out.encode("ascii", "replace")


def help_text() -> str:
    """Every command with its syntax, within one status line (MAX_STATUS_TEXT)."""
    return "commands: " + " | ".join(spec.summary.removeprefix("command ") for spec in COMMANDS.values())


def _example(tokens: list[str]) -> str:
    """A hint for a line that is not `command NAME ...` (`ping` typed on its own, say)."""
    spec = COMMANDS.get(tokens[0].lower(), COMMANDS["ping"])
    return f"requests look like: {spec.summary}"


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "-"


def _printable(text: str) -> str:
    return text[:40]


@dataclass
class LineFramer:
    """Splits a byte stream into request lines.

    Bytes that arrive without a newline stay pending; the shell calls :meth:`take_pending`
    after a short pause or at end of input (docs/protocol.md: `echo -ne` sends no newline).
    Once more than MAX_LINE_BYTES arrive without a newline the framer is ``overflowed``:
    the server answers 413 and closes, since it can no longer tell where the next line starts.
    """

    max_line: int = MAX_LINE_BYTES
    _buffer: bytearray = field(default_factory=bytearray)
    overflowed: bool = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.overflowed:
            return []
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            lines.append(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        for line in lines:
            if len(line) > self.max_line + 1:  # +1: a trailing \r is allowed
                self.overflowed = True
        if len(self._buffer) > self.max_line + 1:
            self.overflowed = True
        if self.overflowed:
            self._buffer.clear()
            # Lines before the over-long one are still answered, in order.
            keep: list[bytes] = []
            for line in lines:
                if len(line) > self.max_line + 1:
                    break
                keep.append(line)
            return keep
        return lines

    @property
    def has_pending(self) -> bool:
        return bool(self._buffer)

    def take_pending(self) -> bytes:
        pending = bytes(self._buffer)
        self._buffer.clear()
        return pending
