"""Helpers for the reliability tests: processes of any role, a ledger-keeping line client."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from keychest.store.db import normalise_url
from tests.support.server import KEYCHEST, loopback_resolver

LIMITS_OFF = (
    "--keys-per-ip-per-hour", "0", "--apikey-burst", "0", "--domains-per-unconfirmed-key", "0",
)  # fmt: skip


@dataclass
class RoleProcess:
    """`keychest serve --role scanner|mailer`: no listener, so started and watched by its log."""

    db_url: str
    data_dir: Path
    role: str
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.role}-{id(self)}.log"

    def start(self) -> RoleProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            *KEYCHEST, "serve", "--role", self.role, "--db", self.db_url, "--data-dir", str(self.data_dir),
            "--mail-domain", "keychest.test", "--resolver", loopback_resolver(), *self.extra,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            env = {**os.environ, **self.env}
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while f"keychest {self.role} running" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.role} did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class LedgerClient:
    """Adds domains over the line API, pipelined, and writes down every `ok` it was given.

    It survives the server going away: on any connection error it reconnects (the server
    may be restarting) and carries on with new names. A request whose answer never came is
    not in the ledger: only what was acknowledged must survive.
    """

    port: int
    key: str
    name: str
    window: int = 16
    acknowledged: list[str] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)
    connection_errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _counter: int = 0

    def start(self) -> LedgerClient:
        self._thread = threading.Thread(target=self._run, name=f"ledger-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    while not self._stop.is_set():
                        self._window(sock)
            except OSError:
                self.connection_errors += 1
                time.sleep(0.05)

    def _window(self, sock: socket.socket) -> None:
        names = []
        for _ in range(self.window):
            self._counter += 1
            names.append(f"n{self._counter}.{self.name}.ledger.test")
        sock.sendall(b"".join(f"command add apikey {self.key} domain {n}\n".encode() for n in names))
        buffer = b""
        answers: list[bytes] = []
        while len(answers) < len(names):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed")
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            answers += [line for line in complete if line.startswith(b"status ")]
        for name, answer in zip(names, answers, strict=True):
            if answer.startswith(b"status ok"):
                self.acknowledged.append(name)
            else:
                self.refused.append(answer)


def request_key(port: int, attempts: int = 100) -> str:
    for _ in range(attempts):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"command apikey\n")
                answer = b""
                while not answer.endswith(b"\n") or b"status " not in answer:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            if b"status ok" in answer:
                return answer.split(b"data ", 1)[1].split(b"\n", 1)[0].decode()
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("no API key")


def watched_hosts(db_url: str) -> set[str]:
    engine = sa.create_engine(normalise_url(db_url))
    try:
        with engine.connect() as conn:
            return set(
                conn.execute(
                    sa.text("SELECT e.host FROM watches w JOIN endpoints e ON e.id = w.endpoint_id")
                ).scalars()
            )
    finally:
        engine.dispose()


def raise_nofile(wanted: int) -> None:
    """Raise this process's open-file limit (children inherit it) as far as the hard limit allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
