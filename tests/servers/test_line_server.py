"""The line API against a live `keychest serve`: real sockets, real bash."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from keychest.client import LineClient
from tests.support.server import LiveServer

pytestmark = pytest.mark.timeout(120)


def bash(script: str, timeout: float = 20) -> str:
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def raw_exchange(port: int, payload: bytes, *, replies: int = 1, wait: float = 5.0) -> bytes:
    """Send bytes and read until ``replies`` status lines came back, the server closed, or ``wait``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        received = b""
        deadline = time.monotonic() + wait
        while received.count(b"status ") < replies and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
        return received


def new_key(server: LiveServer) -> str:
    with LineClient("127.0.0.1", server.line_port) as client:
        reply = client.request("apikey")
    assert reply.ok and reply.data
    return reply.data


def test_seed_snippets_verbatim(live_server: LiveServer) -> None:
    """docs/protocol.md's two snippets, exactly as written, with only host and port filled in."""
    port = live_server.line_port
    out = bash(
        f"""
exec 3<> "/dev/tcp/127.0.0.1/{port}"
echo -ne "command apikey" >&3            # note: no trailing newline
RESPONSE=$(dd bs=1000 count=1 <&3 2>/dev/null | head -n 1)
echo "$RESPONSE"                         # data 28a7e10-1fea-...
"""
    )
    assert out.startswith("data ")
    key = out.split()[1]
    # The whole response arrives in the one dd read: data line and status line.
    both = bash(
        f"""
exec 3<> "/dev/tcp/127.0.0.1/{port}"
echo -ne "command apikey" >&3
dd bs=1000 count=1 <&3 2>/dev/null
"""
    )
    assert both.splitlines()[0].startswith("data ") and both.splitlines()[1].startswith("status ok 200")
    out = bash(
        f"""
exec 3<> "/dev/tcp/127.0.0.1/{port}"
echo -e "command add domain www.example.net apikey {key}" >&3
echo "$(dd bs=1000 count=1 <&3 2>/dev/null)"
"""
    )
    assert out.startswith("status ok 200")
    listed = json.loads(live_server.cli("domains", "--json").stdout)
    assert [(d["domain"], d["port"]) for d in listed] == [("www.example.net", 443)]
    assert listed[0]["account_email"] is None and listed[0]["added_at"]


def test_many_requests_on_one_connection_answered_in_order(live_server: LiveServer) -> None:
    key = new_key(live_server)
    lines = (
        b"".join(f"command add apikey {key} domain d{i}.example\n".encode() for i in range(50))
        + b"command ping\n"
    )
    got = raw_exchange(live_server.line_port, lines, replies=51)
    statuses = got.decode().splitlines()
    assert statuses[:50] == [f"status ok 200 added d{i}.example" for i in range(50)]
    assert statuses[50] == "status ok 200 pong"


@pytest.mark.parametrize(
    ("request_line", "code"),
    [
        (b"command\n", 400),
        (b"command add domain x.example\n", 400),
        (b"command add apikey nosuchkeynosuchkey domain x.example\n", 401),
        (b"command teleport\n", 404),
        (b"command add apikey KEY domain *.example.net\n", 422),
        (b"command claim apikey KEY email not-an-email\n", 422),
        (b"\x00\x01\x02\xff garbage\n", 400),
    ],
)
def test_error_codes(live_server: LiveServer, request_line: bytes, code: int) -> None:
    key = new_key(live_server)
    got = raw_exchange(live_server.line_port, request_line.replace(b"KEY", key.encode()))
    assert got.decode().startswith(f"status error {code} "), got
    # The connection stays usable after an error.
    got = raw_exchange(
        live_server.line_port, request_line.replace(b"KEY", key.encode()) + b"command ping\n", replies=2
    )
    assert got.decode().splitlines()[-1] == "status ok 200 pong"


def test_revoked_key_is_403(live_server: LiveServer) -> None:
    key = new_key(live_server)
    keys = json.loads(live_server.cli("keys", "--json").stdout)
    from keychest.config import Settings
    from keychest.service import keys as key_rules
    from keychest.service.facade import Keychest
    from keychest.store.db import Database

    service = Keychest(Database(live_server.db_url), Settings(live_server.db_url, live_server.data_dir, ""))
    service.call(key_rules.revoke, keys[0]["id"])
    service.db.dispose()
    got = raw_exchange(live_server.line_port, f"command add apikey {key} domain a.example\n".encode())
    assert got.startswith(b"status error 403 ")


def test_over_long_line_is_413_then_closed(live_server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", live_server.line_port), timeout=5) as sock:
        sock.sendall(b"command ping\n" + b"x" * 5000)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received.decode().splitlines() == ["status ok 200 pong", "status error 413 line too long"]


def test_unterminated_request_answered_after_a_pause_and_at_eof(live_server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", live_server.line_port), timeout=5) as sock:
        sock.sendall(b"command ping")
        assert sock.recv(1000) == b"status ok 200 pong\n"
        sock.sendall(b"command ping")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1000) == b"status ok 200 pong\n"


def test_idle_connection_is_closed(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--idle-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", server.line_port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, nothing sent
        assert time.monotonic() - started < 4


def test_too_many_connections_get_503(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--max-connections", "3")
    held = [socket.create_connection(("127.0.0.1", server.line_port)) for _ in range(3)]
    try:
        # Each held connection answered: the server has counted all three.
        for sock in held:
            sock.sendall(b"command ping\n")
            assert sock.recv(100) == b"status ok 200 pong\n"
        got = raw_exchange(server.line_port, b"command ping\n")
        assert got.startswith(b"status error 503 ")
    finally:
        for sock in held:
            sock.close()
    # The places come free once the server has seen the closes: wait for that, not a while.
    deadline = time.monotonic() + 10
    while (got := raw_exchange(server.line_port, b"command ping\n")) != b"status ok 200 pong\n":
        assert got.startswith(b"status error 503 "), got
        assert time.monotonic() < deadline, "closed connections were never released"


def test_apikey_flood_from_one_address_gets_429(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--apikey-burst", "5")
    answers = [raw_exchange(server.line_port, b"command apikey\n").decode() for _ in range(8)]
    assert sum(a.startswith("data ") for a in answers) == 5
    assert all(a.startswith("status error 429 ") for a in answers[5:])
    assert raw_exchange(server.line_port, b"command ping\n") == b"status ok 200 pong\n"


def test_garbage_does_not_stall_other_clients(live_server: LiveServer) -> None:
    junk = [socket.create_connection(("127.0.0.1", live_server.line_port)) for _ in range(20)]
    try:
        for i, sock in enumerate(junk):
            sock.sendall(bytes(range(256)) * (i + 1))
        started = time.monotonic()
        assert raw_exchange(live_server.line_port, b"command ping\n") == b"status ok 200 pong\n"
        assert time.monotonic() - started < 5
    finally:
        for sock in junk:
            sock.close()
    assert live_server.proc is not None and live_server.proc.poll() is None


@pytest.mark.slow  # kills and restarts a server; tests/reliability does it under load
def test_no_ok_lost_to_kill_9(server_factory) -> None:  # type: ignore[no-untyped-def]
    live_server = server_factory("--domains-per-unconfirmed-key", "0")
    key = new_key(live_server)
    acknowledged: list[str] = []
    with LineClient("127.0.0.1", live_server.line_port) as client:
        for i in range(200):
            domain = f"k{i}.example"
            if client.request("add", apikey=key, domain=domain).ok:
                acknowledged.append(domain)
    live_server.kill9()
    live_server.start()
    listed = {d["domain"] for d in json.loads(live_server.cli("domains", "--json").stdout)}
    assert set(acknowledged) <= listed and len(acknowledged) == 200


def test_domains_listing_filtered_by_key(live_server: LiveServer) -> None:
    first, second = new_key(live_server), new_key(live_server)
    for key, domain in ((first, "one.example"), (second, "two.example")):
        assert raw_exchange(
            live_server.line_port, f"command add apikey {key} domain {domain}\n".encode()
        ).startswith(b"status ok 200")
    listed = json.loads(live_server.cli("domains", "--apikey", second, "--json").stdout)
    assert [d["domain"] for d in listed] == ["two.example"]
    unknown = live_server.cli("domains", "--apikey", "no-such-key-000000", "--json")
    assert unknown.returncode == 1 and unknown.stderr.strip() == "Error: unknown API key"
