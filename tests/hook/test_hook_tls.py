"""The hook over TLS (`KEYCHEST_TLS=1` through `openssl s_client`): the API key and the email
leave only to a server that proved who it is, by a pinned key or a CA and its name."""

from __future__ import annotations

import base64
import hashlib
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.hook.fake_server import FakeLineServer, fake_server, keychest_like
from tests.hook.support import (
    CertbotTree,
    HookRun,
    clean_env,
    domains,
    require_tool,
    run_hook,
    server_env,
    silent_server,
)
from tests.support.net import free_port
from tests.support.server import KEYCHEST, start_server


@pytest.fixture(autouse=True)
def _openssl() -> None:
    require_tool("openssl")


@pytest.fixture
def tree(tmp_path: Path) -> CertbotTree:
    return CertbotTree.create(tmp_path / "state")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> tuple[ssl.SSLContext, trustme.LeafCert]:
    leaf = ca.issue_cert(*names)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    return context, leaf


def pin_of(leaf: trustme.LeafCert) -> str:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def deploy(
    tree: CertbotTree, server: FakeLineServer | int, host: str = "127.0.0.1", **settings: str
) -> HookRun:
    port = server if isinstance(server, int) else server.port
    env = clean_env(
        **server_env(port, host),
        RENEWED_DOMAINS="www.example.net",
        KEYCHEST_EMAIL="ops@example.org",
        **settings,
    )
    return run_hook(tree.install_hook("deploy"), env)


def write_pem(path: Path, blob: trustme.Blob) -> str:
    blob.write_to_path(str(path))
    return str(path)


def test_pinned_key_delivers_over_tls(tree: CertbotTree, ca: trustme.CA) -> None:
    context, leaf = server_context(ca, "keychest.internal")
    with fake_server(keychest_like(), tls=context) as server:
        run = deploy(tree, server, KEYCHEST_PIN=pin_of(leaf))
    assert server.commands() == ["apikey", "claim", "add", "renewal"], run.stderr
    assert server.handshakes == 2  # the key is checked on the first, the requests go on the second
    assert "added www.example.net" in run.stderr
    assert tree.spooled() == []


def test_wrong_pin_sends_nothing(tree: CertbotTree, ca: trustme.CA) -> None:
    context, _leaf = server_context(ca, "keychest.internal")
    _other_context, other = server_context(ca, "keychest.internal")
    with fake_server(keychest_like(), tls=context) as server:
        run = deploy(tree, server, KEYCHEST_PIN=pin_of(other))
    assert server.requests == []
    assert "is not KEYCHEST_PIN; nothing sent" in run.stderr
    assert tree.spooled() == ["www.example.net"]


def test_malformed_pin_sends_nothing(tree: CertbotTree, ca: trustme.CA) -> None:
    context, _leaf = server_context(ca, "keychest.internal")
    with fake_server(keychest_like(), tls=context) as server:
        run = deploy(tree, server, KEYCHEST_PIN="sha256//short")
    assert server.requests == [] and server.handshakes == 0
    assert "KEYCHEST_PIN" in run.stderr and tree.spooled() == ["www.example.net"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_ca_file_and_name_deliver(tree: CertbotTree, ca: trustme.CA, tmp_path: Path, host: str) -> None:
    context, _leaf = server_context(ca, host)
    ca_file = write_pem(tmp_path / "ca.pem", ca.cert_pem)
    with fake_server(keychest_like(), tls=context) as server:
        run = deploy(tree, server, host=host, KEYCHEST_CA_FILE=ca_file)
    assert server.commands() == ["apikey", "claim", "add", "renewal"], run.stderr
    assert tree.spooled() == []


def test_another_ca_sends_nothing(tree: CertbotTree, ca: trustme.CA, tmp_path: Path) -> None:
    context, _leaf = server_context(trustme.CA(), "127.0.0.1")  # a stranger's CA
    ca_file = write_pem(tmp_path / "ca.pem", ca.cert_pem)
    with fake_server(keychest_like(), tls=context) as server:
        run = deploy(tree, server, KEYCHEST_CA_FILE=ca_file)
    assert server.requests == []
    assert "TLS:" in run.stderr and "verify" in run.stderr
    assert tree.spooled() == ["www.example.net"]


def test_a_certificate_for_another_name_sends_nothing(
    tree: CertbotTree, ca: trustme.CA, tmp_path: Path
) -> None:
    context, _leaf = server_context(ca, "other.example")  # right CA, wrong name
    ca_file = write_pem(tmp_path / "ca.pem", ca.cert_pem)
    with fake_server(keychest_like(), tls=context) as server:
        run = deploy(tree, server, KEYCHEST_CA_FILE=ca_file)
    assert server.requests == []
    assert "TLS:" in run.stderr and "verify" in run.stderr
    assert tree.spooled() == ["www.example.net"]


def test_system_cas_do_not_trust_a_private_ca(tree: CertbotTree, ca: trustme.CA) -> None:
    context, _leaf = server_context(ca, "127.0.0.1")
    with fake_server(keychest_like(), tls=context) as server:
        run = deploy(tree, server, KEYCHEST_TLS="1")
    assert server.requests == []
    assert tree.spooled() == ["www.example.net"], run.stderr


def test_plain_tls_server_refuses_plain_text_hook(tree: CertbotTree, ca: trustme.CA) -> None:
    # KEYCHEST_TLS unset against a TLS port: the hook's plain request is no handshake, and the
    # fake server (like any TLS server) never reads it as a request.
    context, _leaf = server_context(ca, "127.0.0.1")
    with fake_server(keychest_like(), tls=context) as server:
        deploy(tree, server)
    assert server.requests == []


def fake_tools(tmp_path: Path, marker: Path, without: str | None = None) -> str:
    """A PATH: every tool of /usr/bin and /bin, but `openssl` replaced by one that leaves a
    mark (or, with `without`, missing)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for folder in ("/usr/bin", "/bin"):
        for tool in Path(folder).iterdir():
            target = bin_dir / tool.name
            if tool.name != "openssl" and not target.exists():
                target.symlink_to(tool)
    if without != "openssl":
        fake = bin_dir / "openssl"
        fake.write_text(f'#!/bin/sh\ntouch {marker}\nexec /usr/bin/openssl "$@"\n')
        fake.chmod(0o755)
    return str(bin_dir)


def test_without_tls_openssl_is_never_run(tree: CertbotTree, tmp_path: Path) -> None:
    marker = tmp_path / "openssl-ran"
    with fake_server(keychest_like()) as server:
        run = deploy(tree, server, PATH=fake_tools(tmp_path, marker))
    assert "added www.example.net" in run.stderr
    assert not marker.exists()


def test_tls_without_openssl_sends_nothing_in_plain_text(tree: CertbotTree, tmp_path: Path) -> None:
    with fake_server(keychest_like()) as server:
        run = deploy(
            tree, server, KEYCHEST_TLS="1", PATH=fake_tools(tmp_path, tmp_path / "x", without="openssl")
        )
    assert server.requests == []
    assert "needs openssl" in run.stderr
    assert tree.spooled() == ["www.example.net"]


def serve_supports_line_tls() -> bool:
    proc = subprocess.run([*KEYCHEST, "serve", "--help"], capture_output=True, text=True, timeout=60)
    return "--line-tls-listen" in proc.stdout


def test_real_keychest_serve_over_tls(tree: CertbotTree, ca: trustme.CA, tmp_path: Path) -> None:
    if not serve_supports_line_tls():
        pytest.skip("keychest serve has no --line-tls-listen yet")
    leaf = ca.issue_cert("127.0.0.1")
    cert = write_pem(tmp_path / "cert.pem", leaf.cert_chain_pems[0])
    key = write_pem(tmp_path / "key.pem", leaf.private_key_pem)
    ca_file = write_pem(tmp_path / "ca.pem", ca.cert_pem)
    tls_port = free_port()
    server = start_server(
        tmp_path / "data", "--line-tls-listen", f"127.0.0.1:{tls_port}", "--tls-cert", cert, "--tls-key", key
    )
    try:
        by_pin = deploy(tree, tls_port, KEYCHEST_PIN=pin_of(leaf))
        assert "added www.example.net" in by_pin.stderr, by_pin.stderr + server.log()[-2000:]
        by_ca = deploy(tree, tls_port, KEYCHEST_CA_FILE=ca_file)  # the same key, known by the CA now
        assert "added www.example.net: status ok 200 already monitored" in by_ca.stderr, by_ca.stderr
        assert [d["domain"] for d in domains(server)] == ["www.example.net"]
    finally:
        server.stop()


@pytest.mark.parametrize("settings", [{"KEYCHEST_TLS": "1"}, {"KEYCHEST_PIN": "sha256//" + "A" * 43 + "="}])
def test_a_server_that_never_handshakes_times_out(tree: CertbotTree, settings: dict[str, str]) -> None:
    with silent_server() as port:
        run = deploy(tree, port, KEYCHEST_CONNECT_TIMEOUT="2", **settings)
    assert "connect to 127.0.0.1:" in run.stderr and "timed out after 2s" in run.stderr
    assert run.seconds < 5
    assert tree.spooled() == ["www.example.net"]


def test_moving_to_the_tls_port_keeps_the_key(tree: CertbotTree, ca: trustme.CA) -> None:
    context, leaf = server_context(ca, "127.0.0.1")
    with fake_server(keychest_like()) as plain, fake_server(keychest_like(), tls=context) as tls:
        deploy(tree, plain)
        key = tree.state_values()["apikey"]
        run = deploy(tree, tls, KEYCHEST_PIN=pin_of(leaf))
    assert tls.commands() == ["add", "renewal"], run.stderr  # no new key, no new claim
    assert tree.state_values()["apikey"] == key
