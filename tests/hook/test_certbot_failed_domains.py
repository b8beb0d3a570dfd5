"""certbot 5.x for real (pebble): one lineage's renewal fails, so certbot sets FAILED_DOMAINS
for the post hook, and the hook reports `renewal ... status failed` for exactly those names
and `renewed` with the served certificate's SHA-256 for the others."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keychest.client import LineClient
from tests.hook.pebble import Pebble
from tests.hook.support import CertbotTree, require_tool
from tests.support.net import free_port
from tests.support.server import LiveServer

pytestmark = pytest.mark.slow

CERTBOT5 = os.environ.get("CERTBOT_VENV", "/opt/certbot-venv") + "/bin/certbot"
ABC = ["a.example", "b.example", "c.example"]
DE = ["d.example", "e.example"]


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    certbot = require_tool(CERTBOT5)
    require_tool("pebble")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KEYCHEST_", "RENEWED_", "FAILED_", "PEBBLE_"))
    }
    # pebble reuses half of the valid authorizations by default: a reused one needs no
    # challenge, and the renewal meant to fail then succeeded (1 run in 3).
    env["PEBBLE_AUTHZREUSE"] = "0"
    peb = Pebble(tmp_path / "e2e", certbot, env=env)
    peb.start()
    try:
        yield peb
    finally:
        peb.stop()


def facts(server: LiveServer, key: str, domain: str) -> dict[str, str]:
    with LineClient("127.0.0.1", server.line_port) as client:
        reply = client.request("expiration", apikey=key, domain=domain)
    assert reply.ok, reply
    return dict(word.split("=", 1) for word in (reply.data or "").split())


def test_failed_domains_are_reported_as_failed(pebble: Pebble, live_server: LiveServer) -> None:
    tree = CertbotTree(pebble.state)
    subprocess.run(
        [sys.executable, "-m", "keychest", "hook", "install", "--server", live_server.line_addr,
         "--dir", str(tree.hooks_dir / "post")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    pebble.issue(*ABC)
    pebble.issue(*DE)
    # d.example's lineage renews through another http-01 port, which something else holds:
    # certbot's standalone server cannot bind it and that renewal fails.
    blocked_port = free_port()
    conf = tree.config / "renewal" / "d.example.conf"
    conf.write_text(re.sub(r"http01_port = \d+", f"http01_port = {blocked_port}", conf.read_text()))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", blocked_port))
        squatter.listen(1)
        proc = pebble.renew(check=False)
    assert proc.returncode != 0  # one renewal failed
    log = (tree.logs / "keychest-hook.log").read_text()
    key = tree.state_values()["apikey"]
    leaf = x509.load_pem_x509_certificate((tree.config / "live" / "a.example" / "cert.pem").read_bytes())
    sha = hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
    for name in ABC:
        found = facts(live_server, key, name)
        assert found.get("last_renewal_status") == "renewed", (name, found, log)
    for name in DE:
        found = facts(live_server, key, name)
        assert found.get("last_renewal_status") == "failed", (name, found, log)
        assert found.get("last_renewal_host") == socket.gethostname()
    # What the server stored: the SHA-256 of the certificate certbot just wrote, from a.example's lineage.
    with sqlalchemy.create_engine(live_server.db_url).connect() as db:
        query = "SELECT e.host, r.sha256 FROM renewal_reports r JOIN endpoints e ON e.id = r.endpoint_id"
        stored = dict(db.execute(sqlalchemy.text(query)).all())
    assert {stored[name] for name in ABC} == {sha}
    assert {stored[name] for name in DE} == {None}
    assert "renewal a.example (renewed)" in log and "renewal d.example (failed)" in log
