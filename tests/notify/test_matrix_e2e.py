"""The Matrix channel against a real homeserver: Synapse (PyPI, its own venv, installed by
scripts/install-synapse-test-deps.sh) on a loopback port, plain HTTP, SQLite, no federation.

`keychest notify test matrix://...` must put its message into the room, as a second user
reading the room through the client API sees it; a wrong password must exit 1 with the
homeserver's refusal. A live `keychest serve --notify matrix://...` scanning a TLS server
whose certificate names another host must post the certificate.invalid alert there too."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from keychest.client import LineClient
from tests.scan.certs import CertFactory
from tests.scan.tls_servers import DNSServer, TestServers
from tests.support.net import free_port
from tests.support.server import start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SYNAPSE_VENV = Path(os.environ.get("SYNAPSE_VENV", "/opt/synapse-venv"))
SYNAPSE_PYTHON = SYNAPSE_VENV / "bin" / "python"
ROOM_ALIAS = "#alerts:localhost"
SENDER, SENDER_PASSWORD = "keychest", "sender-" + secrets.token_hex(8)

# Rate limits high enough that a test never waits for the homeserver's throttling.
_LOOSE = "{per_second: 1000, burst_count: 1000}"
CONFIG = """\
server_name: localhost
pid_file: {dir}/homeserver.pid
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {dir}/homeserver.db
media_store_path: {dir}/media
signing_key_path: {dir}/signing.key
registration_shared_secret: {secret}
macaroon_secret_key: {macaroon}
form_secret: {form}
enable_registration: false
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
rc_message: {loose}
rc_registration: {loose}
rc_login:
  address: {loose}
  account: {loose}
  failed_attempts: {loose}
rc_joins:
  local: {loose}
  remote: {loose}
rc_invites:
  per_room: {loose}
  per_user: {loose}
"""


def _synapse_missing() -> bool:
    if not SYNAPSE_PYTHON.exists():
        return True
    found = subprocess.run([str(SYNAPSE_PYTHON), "-c", "import synapse"], capture_output=True)
    return found.returncode != 0


@dataclass
class Homeserver:
    port: int
    log_path: Path
    room_id: str
    reader_token: str  # a second user, in the room, who reads what arrived

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, password: str = SENDER_PASSWORD) -> str:
        return f"matrix://{SENDER}:{password}@127.0.0.1:{self.port}/{ROOM_ALIAS}"

    def messages(self) -> list[dict[str, Any]]:
        """The room's m.room.message events from the sender, oldest first."""
        answer = httpx.get(
            f"{self.base}/_matrix/client/v3/rooms/{quote(self.room_id, safe='')}/messages",
            params={"dir": "b", "limit": "100"},
            headers={"Authorization": f"Bearer {self.reader_token}"},
            timeout=10,
        )
        answer.raise_for_status()
        events = [
            e
            for e in answer.json()["chunk"]
            if e["type"] == "m.room.message" and e["sender"] == f"@{SENDER}:localhost"
        ]
        return events[::-1]

    def wait_for_messages(self, count: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(found := self.messages()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} messages after {timeout} s: {found}")
            time.sleep(0.2)
        return found


def _register(base: str, secret: str, user: str, password: str) -> str:
    """Register through Synapse's shared-secret admin API; the new user's access token."""
    nonce = httpx.get(f"{base}/_synapse/admin/v1/register", timeout=10).json()["nonce"]
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join(x.encode() for x in (nonce, user, password, "notadmin")))
    answer = httpx.post(
        f"{base}/_synapse/admin/v1/register",
        json={"nonce": nonce, "username": user, "password": password, "admin": False, "mac": mac.hexdigest()},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def _wait_until_up(proc: subprocess.Popen[bytes], base: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"synapse exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base}/_matrix/client/versions", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"synapse not up after {timeout} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def homeserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    if _synapse_missing():
        pytest.skip(f"no Synapse in {SYNAPSE_VENV}: run `bash scripts/install-synapse-test-deps.sh`")
    work = tmp_path_factory.mktemp("synapse")
    port, secret = free_port(), secrets.token_hex(16)
    seed = secrets.token_bytes(32)
    # Synapse's signing key file: "ed25519 <key id> <unpadded base64 seed>".
    (work / "signing.key").write_text(f"ed25519 a_test {base64.b64encode(seed).decode().rstrip('=')}\n")
    config = work / "homeserver.yaml"
    config.write_text(
        CONFIG.format(
            dir=work,
            port=port,
            secret=secret,
            macaroon=secrets.token_hex(16),
            form=secrets.token_hex(16),
            loose=_LOOSE,
        )
    )
    log_path = work / "synapse.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(SYNAPSE_PYTHON), "-m", "synapse.app.homeserver", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(proc, base, log_path, timeout=60)
        _register(base, secret, SENDER, SENDER_PASSWORD)
        # The reader logs in with its password, as a person's client would, and opens a
        # public room the sender can join by its alias (Apprise joins before it posts).
        _register(base, secret, "oncall", "reader-pw")
        login = httpx.post(
            f"{base}/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "oncall"},
                "password": "reader-pw",
            },
            timeout=10,
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        room = httpx.post(
            f"{base}/_matrix/client/v3/createRoom",
            json={"room_alias_name": "alerts", "preset": "public_chat", "name": "TLS alerts"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert room.status_code == 200, room.text
        yield Homeserver(port, log_path, room.json()["room_id"], token)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _keychest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keychest", *args], capture_output=True, text=True, timeout=60
    )


def test_notify_test_reaches_the_room_and_a_wrong_password_is_refused(homeserver: Homeserver) -> None:
    before = len(homeserver.messages())
    sent = _keychest("notify", "test", homeserver.url(), "--allow-private-targets")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("sent: ")
    messages = homeserver.messages()
    assert len(messages) == before + 1
    body = messages[-1]["content"]["body"]
    assert "keychest test notification" in body
    assert "This is a test from keychest: the channel works." in body

    refused = _keychest("notify", "test", homeserver.url("wrong-password"), "--allow-private-targets")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and "Matrix" in refused.stderr
    assert "403" in refused.stderr  # the homeserver's M_FORBIDDEN for the login
    # The CLI has exited: whatever it could have sent is in the room by now.
    assert len(homeserver.messages()) == before + 1


def test_serve_posts_a_real_alert_to_the_room(tmp_path: Path, homeserver: Homeserver) -> None:
    before = len(homeserver.messages())
    certs = CertFactory(tmp_path)
    now = dt.datetime.now(dt.UTC)
    leaf = certs.issued(
        "right.matrix.test", not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=80)
    )
    with TestServers() as servers, DNSServer({"wrong.matrix.test": ["127.0.0.1"]}) as dns:
        port = servers.tls(leaf.chain_pem, leaf.key_pem, hosts=["127.0.0.1"])
        live = start_server(
            tmp_path / "data",
            "--allow-private-targets",
            "--ca-file", str(certs.ca_file),
            "--resolver", dns.address,
            "--notify", homeserver.url(),
        )  # fmt: skip
        try:
            with LineClient("127.0.0.1", live.line_port) as client:
                key = client.request("apikey").data or ""
                assert client.request("add", apikey=key, domain=f"wrong.matrix.test:{port}").ok
            messages = homeserver.wait_for_messages(before + 1, timeout=60)
        finally:
            live.stop()
    body = messages[-1]["content"]["body"]
    assert "certificate invalid: hostname_mismatch" in body and "wrong.matrix.test" in body, body
