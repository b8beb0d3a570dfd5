"""Start-up before the database (issue 16 item 6): `serve` waits for a PostgreSQL that is not
up yet, with back-off and one log line per attempt (no traceback), then runs; the password
comes from --db-password-file and appears nowhere in the log."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import PG_URL
from tests.support.net import free_port
from tests.support.pg import fresh_schema
from tests.support.server import KEYCHEST

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not PG_URL, reason="needs KEYCHEST_TEST_DATABASE_URL"),
]

PASSWORD = "s3cret-db-pass/with:odd@chars"


@contextlib.contextmanager
def relay(listen_port: int, target: tuple[str, int]) -> Iterator[None]:
    """PostgreSQL "coming up": a TCP relay on listen_port to the real server."""
    server = socket.create_server(("127.0.0.1", listen_port))
    server.settimeout(0.2)
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.close()
        thread.join(5)


def test_serve_waits_for_the_database(tmp_path: Path) -> None:
    port = free_port()
    real = urlsplit(PG_URL or "")
    with fresh_schema(PG_URL or "", f"kc_{uuid.uuid4().hex[:12]}") as url:
        parts = urlsplit(url)
        user = parts.username or "postgres"
        waiting_url = f"postgresql://{user}@127.0.0.1:{port}{parts.path}?{parts.query}"
        password_file = tmp_path / "db.password"
        password_file.write_text(PASSWORD + "\n")
        log_path = tmp_path / "scanner.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*KEYCHEST, "serve", "--role", "scanner", "--db", waiting_url,
                 "--db-password-file", str(password_file), "--data-dir", str(tmp_path / "d")],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:

            def text() -> str:
                return log_path.read_text(errors="replace")

            deadline = time.monotonic() + 30
            while text().count("retrying in") < 2:
                assert proc.poll() is None, text()
                assert time.monotonic() < deadline, text()
                time.sleep(0.1)
            with relay(port, (real.hostname or "127.0.0.1", real.port or 5432)):
                deadline = time.monotonic() + 40
                while "keychest scanner running" not in text():
                    assert proc.poll() is None, text()
                    assert time.monotonic() < deadline, text()
                    time.sleep(0.1)
                proc.terminate()
                proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log_text = text()
    attempts = [line for line in log_text.splitlines() if "retrying in" in line]
    assert "attempt 1, retrying in 1 s" in attempts[0] and "attempt 2, retrying in 2 s" in attempts[1]
    assert all(line.startswith("20") and "WARNING" in line for line in attempts)
    assert "Traceback" not in log_text
    assert PASSWORD not in log_text and "s3cret" not in log_text


def test_a_wrong_role_is_not_waited_for(tmp_path: Path) -> None:
    real = urlsplit(PG_URL or "")
    url = f"postgresql://no_such_role_kc@{real.hostname}:{real.port or 5432}/test"
    started = time.monotonic()
    done = subprocess.run(
        [*KEYCHEST, "serve", "--role", "scanner", "--db", url, "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert time.monotonic() - started < 20  # no back-off: waiting cannot fix a missing role
    assert "retrying" not in done.stderr and "Traceback" not in done.stderr
    assert 'role "no_such_role_kc" does not exist' in done.stderr.strip().splitlines()[-1]
