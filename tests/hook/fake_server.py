"""A line server that answers as the test tells it to: a hostile keychest, over TCP or TLS."""

from __future__ import annotations

import secrets
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

# request line -> raw bytes to send back (b"" sends nothing)
Handler = Callable[[str], bytes]


def new_key() -> str:
    text = secrets.token_hex(20)
    return "-".join(text[i : i + 8] for i in range(0, 40, 8))


def keychest_like(overrides: dict[str, Handler] | None = None) -> Handler:
    """Answers like keychest serve; `overrides` replace the answer per command word."""
    overrides = overrides or {}

    def handle(line: str) -> bytes:
        words = line.split()
        pairs = dict(zip(words[::2], words[1::2], strict=False))
        command = pairs.get("command", "")
        if command in overrides:
            return overrides[command](line)
        if command == "apikey":
            return f"data {new_key()}\nstatus ok 200 new API key; keep it\n".encode()
        if command == "claim":
            return b"status ok 200 claimed; the owner of that address confirms by mail\n"
        if command == "add":
            return f"status ok 200 added {pairs.get('domain', '')}\n".encode()
        if command == "maildomain":
            return b"data keychest.test\nstatus ok 200 the placeholder mail domain\n"
        return b"status error 404 unknown command\n"

    return handle


@dataclass
class FakeLineServer:
    handler: Handler
    tls: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    requests: list[str] = field(default_factory=list)
    handshakes: int = 0
    port: int = 0
    _sock: socket.socket | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.bind((self.host, 0))
        sock.listen(16)
        self._sock = sock
        self.port = sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        if self._sock is not None:
            with suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                self.handshakes += 1
            conn.settimeout(20)
            with conn, conn.makefile("rb") as reader:
                for raw in reader:
                    line = raw.decode("ascii", "replace").strip()
                    if not line:
                        continue
                    self.requests.append(line)
                    answer = self.handler(line)
                    if answer:
                        conn.sendall(answer)
        except (OSError, ssl.SSLError, ValueError):
            return

    def commands(self) -> list[str]:
        return [r.split()[1] if len(r.split()) > 1 else "" for r in self.requests]


@contextmanager
def fake_server(handler: Handler, tls: ssl.SSLContext | None = None) -> Iterator[FakeLineServer]:
    server = FakeLineServer(handler, tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
