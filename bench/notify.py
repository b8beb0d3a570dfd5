"""Benchmark alert-channel delivery through the outbox (issue 12).

    .venv/bin/python bench/notify.py [--count 2000] [--dead 10000] [--db URL]

1. Throughput: ``--count`` notifications queued to one signed webhook whose receiver is a
   local HTTP server; the real notifier (servers.notifier.Notifier: lease, sign, POST, mark
   sent per row) delivers them. Prints notifications per second.
2. Isolation: ``--dead`` notifications queued to a channel whose receiver accepts the
   connection and never answers (a hung service), plus ``--count`` to a live one. Prints how
   long the live channel takes with the dead one beside it, against step 1.

SQLite in a temporary folder unless --db names another database (it must be empty).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from keychest.config import NotifySettings, Settings  # noqa: E402
from keychest.notify import signing  # noqa: E402
from keychest.notify.events import EXPIRING  # noqa: E402
from keychest.scan.model import ScanOptions  # noqa: E402
from keychest.servers.notifier import Notifier  # noqa: E402
from keychest.service import channels, outbox  # noqa: E402
from keychest.service.context import Ctx  # noqa: E402
from keychest.service.facade import Keychest  # noqa: E402
from keychest.store.db import Database, upgrade  # noqa: E402


class Sink:
    """A local webhook receiver: HTTP/1.1, answers 204 to every POST, counts them."""

    def __init__(self) -> None:
        self.count = 0
        lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with lock:
                    sink.count += 1
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Hung:
    """Accepts connections and reads, never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def service(db_url: str, webhooks: tuple[str, ...], timeout_s: float) -> Keychest:
    db = Database(db_url)
    upgrade(db)
    settings = Settings(
        db_url=db_url,
        data_dir=Path("."),
        mail_domain="bench.test",
        scan=ScanOptions(allow_private_targets=True),
        notify=NotifySettings(
            webhook_urls=webhooks, webhook_secret=signing.new_secret(), timeout_s=timeout_s
        ),
    )
    return Keychest(db, settings, lambda: datetime.utcnow())


def queue(svc: Keychest, url: str, count: int) -> None:
    def add(ctx: Ctx) -> None:
        channels.ensure_server(ctx)
        channel_id = next(c.id for c in channels.list_all(ctx) if c.label.startswith(url.rsplit("/", 1)[0]))
        for n in range(count):
            outbox.enqueue_notification(
                ctx,
                channel_id=channel_id,
                to_label=url,
                account_id=None,
                payload={
                    "id": f"msg_{channel_id}_{n}",
                    "type": EXPIRING,
                    "title": "t",
                    "message": "m",
                },
            )

    svc.call(add)


async def until(predicate: object, notifier: Notifier, timeout: float) -> float:
    start = time.perf_counter()
    task = asyncio.create_task(notifier.run())
    try:
        while not predicate():  # type: ignore[operator]
            if time.perf_counter() - start > timeout:
                raise SystemExit("timed out")
            await asyncio.sleep(0.005)
        return time.perf_counter() - start
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--dead", type=int, default=10_000)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sink = Sink()
        hung = Hung()
        try:
            url = args.db or f"sqlite:///{tmp}/one.sqlite3"
            svc = service(url, (sink.url,), timeout_s=10.0)
            queue(svc, sink.url, args.count)
            notifier = Notifier(svc, idle_poll_s=0.01)
            alone = asyncio.run(until(lambda: sink.count >= args.count, notifier, 600))
            svc.db.dispose()
            print(
                f"live channel alone: {args.count} notifications in {alone:.2f} s = "
                f"{args.count / alone:.0f}/s"
            )

            sink.count = 0
            url = f"sqlite:///{tmp}/two.sqlite3" if args.db is None else args.db
            if args.db is not None:
                raise SystemExit("step 2 needs a fresh database: run without --db")
            svc = service(url, (hung.url, sink.url), timeout_s=5.0)
            queue(svc, hung.url, args.dead)
            queue(svc, sink.url, args.count)
            beside = asyncio.run(
                until(lambda: sink.count >= args.count, Notifier(svc, idle_poll_s=0.01), 600)
            )
            print(
                f"live channel beside a hung one with {args.dead} queued: {args.count} notifications in "
                f"{beside:.2f} s = {args.count / beside:.0f}/s "
                f"(hung receiver got {len(hung.held)} connection(s))"
            )
            svc.db.dispose()
        finally:
            sink.close()
            hung.close()


if __name__ == "__main__":
    main()
