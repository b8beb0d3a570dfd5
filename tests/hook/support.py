"""Helpers for the certbot hook tests: a certbot config tree, running the hook, quiet servers."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.server import LiveServer

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "hooks" / "certbot" / "keychest-hook.sh"
PACKAGE_HOOK = REPO / "src" / "keychest" / "hooks" / "keychest-hook.sh"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The hook promises certbot an answer within 15 s whatever the network does.
HOOK_DEADLINE_S = 15.0


def require_tool(path_or_name: str) -> str:
    """The tool's path; a missing tool skips the test locally but fails it in CI."""
    found = shutil.which(path_or_name)
    if found:
        return found
    message = f"{path_or_name} is not installed (bash scripts/install-certbot-test-deps.sh)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def make_cert_pem(names: list[str]) -> bytes:
    """A self-signed certificate whose subjectAltName lists `names` (what live/X/cert.pem holds)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test issuer")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class CertbotTree:
    """A certbot --config-dir/--logs-dir pair laid out as certbot leaves it (the harness's <STATE>)."""

    state: Path

    @property
    def config(self) -> Path:
        return self.state / "certbot" / "config"

    @property
    def logs(self) -> Path:
        return self.state / "certbot" / "logs"

    @property
    def hooks_dir(self) -> Path:
        return self.config / "renewal-hooks"

    @property
    def state_file(self) -> Path:
        return self.hooks_dir / "keychest_apikey"

    @property
    def spool_file(self) -> Path:
        return self.hooks_dir / "keychest_spool"

    @classmethod
    def create(cls, state: Path) -> CertbotTree:
        tree = cls(state)
        for kind in ("pre", "deploy", "post"):
            (tree.hooks_dir / kind).mkdir(parents=True, exist_ok=True)
        tree.logs.mkdir(parents=True, exist_ok=True)
        return tree

    def add_lineage(self, name: str, names: list[str], account: str = "0123456789abcdef") -> None:
        """renewal/NAME.conf (as certbot writes it: no domain list) and live/NAME/cert.pem."""
        live = self.config / "live" / name
        live.mkdir(parents=True, exist_ok=True)
        (live / "cert.pem").write_bytes(make_cert_pem(names))
        renewal = self.config / "renewal"
        renewal.mkdir(parents=True, exist_ok=True)
        (renewal / f"{name}.conf").write_text(
            f"version = 2.1.0\narchive_dir = {self.config}/archive/{name}\ncert = {live}/cert.pem\n"
            f"privkey = {live}/privkey.pem\nchain = {live}/chain.pem\nfullchain = {live}/fullchain.pem\n\n"
            f"[renewalparams]\naccount = {account}\nconfig_dir = {self.config}\n"
            f"work_dir = {self.state}/certbot/work\nlogs_dir = {self.logs}\nauthenticator = standalone\n"
        )

    def write_log(self, text: str) -> Path:
        """letsencrypt.log from fixture text, its <STATE>/<E2E> placeholders made real."""
        path = self.logs / "letsencrypt.log"
        path.write_text(text.replace("<STATE>", str(self.state)).replace("<E2E>", "/opt/e2e"))
        return path

    def install_hook(self, kind: str, name: str = "keychest-hook.sh") -> Path:
        target = self.hooks_dir / kind / name
        shutil.copyfile(HOOK, target)
        target.chmod(0o755)
        return target

    def state_values(self) -> dict[str, str]:
        lines = self.state_file.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))

    def spooled(self) -> list[str]:
        return self.spool_file.read_text().split() if self.spool_file.exists() else []


def fixture_log(version: str) -> str:
    return (FIXTURES / f"certbot-{version}.log").read_text()


def runs(log_text: str) -> list[str]:
    """The log split into certbot runs (each starts at its `certbot version:` line)."""
    out: list[str] = []
    for line in log_text.splitlines(keepends=True):
        if "certbot version:" in line or not out:
            out.append("")
        out[-1] += line
    return out


@dataclass
class HookRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any certbot or keychest variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYCHEST_", "RENEWED_", "FAILED_"))}
    env.update(extra)
    return env


def server_env(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    return {"KEYCHEST_SERVER": host, "KEYCHEST_PORT": str(port)}


def run_hook(hook: Path, env: dict[str, str], *args: str) -> HookRun:
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(hook), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return HookRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def domains(server: LiveServer, apikey: str | None = None) -> list[dict[str, object]]:
    args = ["domains", "--json"] + (["--apikey", apikey] if apikey else [])
    proc = server.cli(*args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def cli_json(server: LiveServer, command: str) -> list[dict[str, object]]:
    proc = server.cli(command, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@contextmanager
def silent_server() -> Iterator[int]:
    """A socket that accepts connections and never answers: the hook must time out reading."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@contextmanager
def dropping_server() -> Iterator[int]:
    """A port whose SYNs go unanswered, as behind a dropping firewall: a listener with a full
    accept queue (backlog 0, filled by connections nobody accepts) lets new connects hang."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        port = sock.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        try:
            yield port
        finally:
            for filler in fillers:
                filler.close()
