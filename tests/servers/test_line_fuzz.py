"""Any bytes, cut anywhere, over a real socket: every request line gets exactly one answer,
in order, and the server keeps serving everyone else."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keychest.protocol.line import MAX_LINE_BYTES, LineError, parse_request
from tests.support.server import LiveServer, start_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(Path(tmp_path_factory.mktemp("fuzz")) / "data", "--apikey-burst", "0")
    yield live
    live.stop()


# Lines built from protocol words and noise, so that many are valid requests (ping, help,
# maildomain, add with unknown keys) and many are refused for every reason the parser has.
WORDS = st.sampled_from(
    ["command", "ping", "help", "maildomain", "add", "apikey", "domain", "email", "claim", "expiration",
     "x.example", "no-such-key-0000000", "COMMAND", "PING", "\t", "*.x", "\x00", "\xff", "é"]
)  # fmt: skip
LINE = st.one_of(
    st.lists(WORDS, max_size=8).map(" ".join),
    st.text(max_size=60),
).map(lambda text: text.encode("utf-8", "surrogatepass")[: MAX_LINE_BYTES - 10].replace(b"\n", b" "))


def expected_answers(lines: list[bytes]) -> list[str]:
    """What the pure parser says each line gets: the start of its status line (None: no answer)."""
    answers = []
    for line in lines:
        try:
            request = parse_request(line)
        except LineError as exc:
            answers.append(f"status error {exc.code} ")
            continue
        if request is None:
            continue
        answers.append("status ")  # valid grammar: ok or an error from the rules, checked below
        if request.command == "ping":
            answers[-1] = "status ok 200 pong"
    return answers


def _answered(received: bytes) -> int:
    """Complete status lines so far. Counting "status " anywhere stopped early: the help text
    names the renewal command's ``status S`` argument."""
    return sum(1 for line in received.split(b"\n")[:-1] if line.startswith(b"status "))


def exchange(port: int, payload: bytes, chunk_sizes: list[int], replies: int) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        position = 0
        for size in chunk_sizes:
            sock.sendall(payload[position : position + size])
            position += size
        sock.sendall(payload[position:])
        received = b""
        deadline = time.monotonic() + 10
        while _answered(received) < replies and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return [line for line in received.decode("ascii").split("\n") if line]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(LINE, min_size=1, max_size=12), st.lists(st.integers(1, 64), max_size=10))
def test_every_line_is_answered_once_and_in_order(
    server: LiveServer, lines: list[bytes], chunk_sizes: list[int]
) -> None:
    payload = b"".join(line + b"\n" for line in lines)
    wanted = expected_answers(lines)
    got = [
        line
        for line in exchange(server.line_port, payload, chunk_sizes, len(wanted))
        if line.startswith("status")
    ]
    assert len(got) == len(wanted), (lines, got)
    for answer, start in zip(got, wanted, strict=True):
        assert answer.startswith(start), (answer, start)
        assert answer.split()[1] in ("ok", "error") and answer.split()[2].isdigit()
    # Whatever came before, the server still answers a new client at once.
    assert exchange(server.line_port, b"command ping\n", [], 1) == ["status ok 200 pong"]
