"""Connection caps, the idle clock and the TLS listener of the line API, against a live server."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from tests.reliability.support import raise_nofile
from tests.support.net import free_port
from tests.support.server import LiveServer

pytestmark = pytest.mark.timeout(180)


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def read_status(sock: socket.socket) -> bytes:
    """Everything up to and including the first status line (b'' when closed first)."""
    received = b""
    while b"status " not in received or not received.endswith(b"\n"):
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return received


def ask(sock: socket.socket, line: bytes) -> bytes:
    """Send one request and read its answer; a refused connection gives its 503 instead."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(line)
    return read_status(sock)


def test_one_address_cannot_take_every_connection(server_factory) -> None:  # type: ignore[no-untyped-def]
    """More connections from 127.0.0.2 than --max-connections: 127.0.0.1 is still answered at once."""
    hogs_wanted = 4200  # over the default --max-connections (4096)
    raise_nofile(hogs_wanted + 1024)
    server: LiveServer = server_factory()
    hogs: list[socket.socket] = []
    try:
        for _ in range(hogs_wanted):
            hogs.append(connect(server.line_port, "127.0.0.2"))
        # Every hog either holds its connection (answers pong) or was turned away with 503.
        answers = [ask(sock, b"command ping\n") for sock in hogs]
        held = sum(a == b"status ok 200 pong\n" for a in answers)
        refused = [a for a in answers if a.startswith(b"status error 503 ")]
        assert held == 256, (held, len(refused))
        assert len(refused) == hogs_wanted - held
        assert refused[0] == b"status error 503 too many connections from your address; retry later\n"
        started = time.monotonic()
        with connect(server.line_port, "127.0.0.1") as other:
            assert ask(other, b"command ping\n") == b"status ok 200 pong\n"
        assert time.monotonic() - started < 1.0
    finally:
        for sock in hogs:
            sock.close()


def test_per_address_cap_is_a_flag_and_frees_on_close(server_factory) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = server_factory("--max-connections-per-ip", "3")
    held = [connect(server.line_port, "127.0.0.3") for _ in range(3)]
    try:
        assert all(ask(sock, b"command ping\n") == b"status ok 200 pong\n" for sock in held)
        with connect(server.line_port, "127.0.0.3") as fourth:
            assert read_status(fourth).startswith(b"status error 503 too many connections from your address")
        with connect(server.line_port, "127.0.0.4") as elsewhere:
            assert ask(elsewhere, b"command ping\n") == b"status ok 200 pong\n"
        held.pop().close()
        # The server notices the close in its own time: wait for the freed place to show.
        deadline = time.monotonic() + 10
        while True:
            with connect(server.line_port, "127.0.0.3") as again:
                if ask(again, b"command ping\n") == b"status ok 200 pong\n":
                    break
            assert time.monotonic() < deadline, "the closed connection was never released"
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()


def test_blank_lines_do_not_keep_a_connection_open(server_factory) -> None:  # type: ignore[no-untyped-def]
    server: LiveServer = server_factory("--idle-timeout", "1")
    with connect(server.line_port) as blank, connect(server.line_port) as busy:
        blank.settimeout(0.2)
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 8:
            try:
                blank.sendall(b"\n")
                busy.sendall(b"command ping\n")
                assert read_status(busy) == b"status ok 200 pong\n"
                if blank.recv(100) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None, "blank lines kept the connection past --idle-timeout"
        assert closed_after < 4
        # Meanwhile the connection that sent real requests was kept, past the time-out too.
        busy.sendall(b"command ping\n")
        assert read_status(busy) == b"status ok 200 pong\n"


def tls_request(port: int, ca_file: Path, payload: bytes) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_file))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(payload)
        received = b""
        while received.count(b"status ") < payload.count(b"\n") or not received.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received


def openssl_request(port: int, ca_file: Path, line: bytes) -> str:
    command = [
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
        "-verify_hostname", "localhost", "-CAfile", str(ca_file), "-verify_return_error",
        "-quiet", "-ign_eof",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(line)
        proc.stdin.flush()
        while True:
            answer = proc.stdout.readline().decode()
            if not answer or answer.startswith("status "):
                return answer.strip()
    finally:
        proc.kill()
        proc.wait()


def test_line_api_over_tls(server_factory, tls_files: tuple[Path, Path, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key, ca_file = tls_files
    tls_port = free_port()
    server: LiveServer = server_factory(
        "--line-tls-listen", f"127.0.0.1:{tls_port}", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    issued = tls_request(tls_port, ca_file, b"command apikey\n").decode()
    assert issued.splitlines()[1] == "status ok 200 new API key; keep it"
    api_key = issued.split()[1]
    added = tls_request(tls_port, ca_file, f"command add apikey {api_key} domain tls.example\n".encode())
    assert added == b"status ok 200 added tls.example\n"
    # The same server, the same data, over plain TCP.
    with connect(server.line_port) as plain:
        answer = ask(plain, f"command add apikey {api_key} domain tls.example\n".encode())
    assert answer.startswith(b"status ok 200 already monitored tls.example")
    # openssl s_client, as the certbot hook uses it, verifying the chain and the name. Its
    # stdin stays open until the answer is read: at stdin's end s_client closes at once.
    assert openssl_request(tls_port, ca_file, b"command ping\n") == "status ok 200 pong"
    # A client that does not trust the certificate gets no answer at all.
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_request(tls_port, stranger, b"command ping\n")


def test_tls_listener_needs_cert_and_key(tmp_path: Path) -> None:
    from tests.support.server import KEYCHEST

    done = subprocess.run(
        [*KEYCHEST, "serve", "--data-dir", str(tmp_path), "--line-tls-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--line-tls-listen needs --tls-cert and --tls-key" in done.stderr
