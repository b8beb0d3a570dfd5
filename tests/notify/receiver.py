"""A real local HTTP receiver for notification tests: records every request, answers what the
test sets (status, or a hang), and lets a test wait for the N-th request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    status: int = 200
    answer: bytes = b"ok"
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} requests arrived, expected {count}")
            return list(self.requests)


@contextmanager
def receiver(status: int = 200, *, hang: bool = False) -> Iterator[Receiver]:
    """Serve on a free loopback port; ``hang`` answers nothing until the test ends."""
    release = threading.Event()
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            me = state["r"]
            with me.arrived:
                me.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                me.arrived.notify_all()
            if hang:
                release.wait(60)
                return
            self.send_response(me.status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(me.answer)))
            self.end_headers()
            self.wfile.write(me.answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    state["r"] = Receiver(f"http://127.0.0.1:{port}", status=status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["r"]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
