"""Run the real `keychest serve` as a subprocess on loopback, as users do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.scan.tls_servers import DNSServer
from tests.support.net import free_port, wait_for_port

KEYCHEST = [sys.executable, "-m", "keychest"]


@dataclass
class LiveServer:
    data_dir: Path
    db_url: str
    line_port: int
    http_port: int
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def line_addr(self) -> str:
        return f"127.0.0.1:{self.line_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        env = {**os.environ, **self.extra_env}
        self.proc = subprocess.Popen(
            [*KEYCHEST, "serve", *self.args], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        try:
            wait_for_port(self.line_port)
        except TimeoutError:
            self.stop()
            raise RuntimeError("keychest serve did not start:\n" + self.log()) from None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a `keychest` admin command against this server's database."""
        return subprocess.run(
            [*KEYCHEST, *args, "--db", self.db_url], capture_output=True, text=True, timeout=60
        )


_loopback_dns: DNSServer | None = None


def loopback_resolver() -> str:
    """A DNS server on 127.0.0.1 that knows only localhost.

    Every test server's scanner asks it instead of the machine's resolver, so that names
    registered in tests (www.example.net, a.example, ...) never cause a query off this
    machine. A test that needs other names passes its own `--resolver` (the last one wins).
    """
    global _loopback_dns
    if _loopback_dns is None:
        _loopback_dns = DNSServer({"localhost": ["127.0.0.1"]})
    return _loopback_dns.address


def start_server(data_dir: Path, *extra: str, db_url: str | None = None) -> LiveServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    line_port, http_port = free_port(), free_port()
    url = db_url or f"sqlite:///{data_dir.resolve() / 'keychest.db'}"
    args = [
        "--db", url,
        "--data-dir", str(data_dir),
        "--line-listen", f"127.0.0.1:{line_port}",
        "--http-listen", f"127.0.0.1:{http_port}",
        "--mail-domain", "keychest.test",
        "--resolver", loopback_resolver(),
        "--scan-timeout", "3",
        *extra,
    ]  # fmt: skip
    server = LiveServer(data_dir, url, line_port, http_port, args, data_dir / "serve.log")
    server.start()
    return server
