"""The hook's `command renewal`: certbot's RENEWED_DOMAINS with the new leaf's SHA-256 (coreutils
only), FAILED_DOMAINS as failures, and the server's answer end to end (`command expiration`)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keychest.client import LineClient
from tests.hook.fake_server import fake_server, keychest_like
from tests.hook.support import CertbotTree, clean_env, run_hook, server_env
from tests.support.server import LiveServer

ABC = ["a.example", "b.example", "c.example"]
DE = ["d.example", "e.example"]


@pytest.fixture
def tree(tmp_path: Path) -> CertbotTree:
    tree = CertbotTree.create(tmp_path / "state")
    tree.add_lineage("a.example", ABC)
    tree.add_lineage("d.example", DE)
    tree.write_log("")
    return tree


def leaf_sha256(tree: CertbotTree, lineage: str) -> str:
    pem = (tree.config / "live" / lineage / "cert.pem").read_bytes()
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()


def renewals(requests: list[str]) -> dict[str, dict[str, str]]:
    found = {}
    for line in requests:
        words = line.split()
        pairs = dict(zip(words[::2], words[1::2], strict=False))
        if pairs.get("command") == "renewal":
            found[pairs["domain"]] = pairs
    return found


def test_deploy_hook_reports_the_renewal_with_the_new_leafs_sha256(tree: CertbotTree) -> None:
    with fake_server(keychest_like({"renewal": lambda line: b"status ok 200 recorded\n"})) as server:
        env = clean_env(
            **server_env(server.port),
            RENEWED_DOMAINS=" ".join(DE),
            RENEWED_LINEAGE=str(tree.config / "live" / "d.example"),
        )
        run = run_hook(tree.install_hook("deploy"), env)
    assert run.returncode == 0, run.stderr
    reported = renewals(server.requests)
    assert sorted(reported) == DE
    sha = leaf_sha256(tree, "d.example")
    for pairs in reported.values():
        assert pairs["status"] == "renewed" and pairs["sha256"] == sha
        assert pairs["host"] == socket.gethostname()  # uname -n
    # every renewal follows the add of its domain
    commands = [line.split()[1] for line in server.requests]
    assert commands.index("renewal") > commands.index("add")


def test_post_hook_reports_renewed_and_failed_domains_of_certbot_5(tree: CertbotTree) -> None:
    with fake_server(keychest_like({"renewal": lambda line: b"status ok 200 recorded\n"})) as server:
        env = clean_env(**server_env(server.port), RENEWED_DOMAINS=" ".join(ABC), FAILED_DOMAINS=" ".join(DE))
        run = run_hook(tree.install_hook("post"), env)
    assert run.returncode == 0, run.stderr
    reported = renewals(server.requests)
    assert sorted(reported) == ABC + DE
    sha = leaf_sha256(tree, "a.example")
    assert {reported[d]["sha256"] for d in ABC} == {sha}
    assert {reported[d]["status"] for d in DE} == {"failed"}
    assert all("sha256" not in reported[d] for d in DE)


def test_an_older_server_without_renewal_still_gets_the_adds(tree: CertbotTree) -> None:
    with fake_server(keychest_like()) as server:  # answers 404 unknown command to renewal
        env = clean_env(
            **server_env(server.port),
            RENEWED_DOMAINS=" ".join(DE),
            RENEWED_LINEAGE=str(tree.config / "live" / "d.example"),
        )
        run = run_hook(tree.install_hook("deploy"), env)
    assert run.returncode == 0
    adds = [line for line in server.requests if line.split()[1] == "add"]
    assert len(adds) == 2
    assert tree.spooled() == []


def test_the_renewal_reaches_expiration_on_a_live_server(tree: CertbotTree, live_server: LiveServer) -> None:
    env = clean_env(
        **server_env(live_server.line_port),
        RENEWED_DOMAINS=" ".join(DE),
        RENEWED_LINEAGE=str(tree.config / "live" / "d.example"),
    )
    run = run_hook(tree.install_hook("deploy"), env)
    assert run.returncode == 0, run.stderr
    key = tree.state_values()["apikey"]
    with LineClient("127.0.0.1", live_server.line_port) as client:
        reply = client.request("expiration", apikey=key, domain="d.example")
    assert reply.ok, reply
    assert "last_renewal_status=renewed" in (reply.data or "")
    assert "last_renewal_host=" in (reply.data or "")
