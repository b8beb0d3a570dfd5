"""The same hook file as a lego hook (LEGO_CERT_DOMAIN, LEGO_CERT_PATH) and as a dehydrated hook
(`deploy_cert DOMAIN KEY CERT ...`, `invalid_challenge DOMAIN RESPONSE`, and the calls it must
ignore): first with a recording line server, then for real against pebble (slow)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keychest.client import LineClient
from tests.hook.fake_server import fake_server, keychest_like
from tests.hook.pebble import Pebble
from tests.hook.support import HOOK, clean_env, make_cert_pem, require_tool, run_hook, server_env
from tests.support.server import LiveServer

RECORDED = keychest_like({"renewal": lambda line: b"status ok 200 recorded\n"})


def sha_of(pem_path: Path) -> str:
    cert = x509.load_pem_x509_certificates(pem_path.read_bytes())[0]
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def pairs_of(requests: list[str], command: str) -> list[dict[str, str]]:
    found = []
    for line in requests:
        words = line.split()
        pairs = dict(zip(words[::2], words[1::2], strict=False))
        if pairs.get("command") == command:
            found.append(pairs)
    return found


def installed_hook(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "keychest-hook.sh"
    shutil.copyfile(HOOK, target)
    target.chmod(0o755)
    return target


def test_lego_run_hook(tmp_path: Path) -> None:
    lego = tmp_path / ".lego"
    (lego / "certificates").mkdir(parents=True)
    cert = lego / "certificates" / "www.example.net.crt"
    cert.write_bytes(make_cert_pem(["www.example.net", "api.example.net"]))
    hook = installed_hook(tmp_path / "bin")
    with fake_server(RECORDED) as server:
        env = clean_env(
            **server_env(server.port),
            LEGO_CERT_DOMAIN="www.example.net",
            LEGO_CERT_PATH=str(cert),
            LEGO_CERT_KEY_PATH=str(lego / "certificates" / "www.example.net.key"),
            LEGO_ACCOUNT_EMAIL="ops@example.org",
        )
        run = run_hook(hook, env)
    assert run.returncode == 0, run.stderr
    assert sorted(p["domain"] for p in pairs_of(server.requests, "add")) == [
        "api.example.net",
        "www.example.net",
    ]
    renewals = pairs_of(server.requests, "renewal")
    assert {(p["domain"], p["status"], p["sha256"]) for p in renewals} == {
        ("www.example.net", "renewed", sha_of(cert)),
        ("api.example.net", "renewed", sha_of(cert)),
    }
    assert pairs_of(server.requests, "claim")[0]["email"] == "ops@example.org"
    assert (lego / "keychest_apikey").exists()  # state in lego's own folder


def test_dehydrated_deploy_cert_and_invalid_challenge(tmp_path: Path) -> None:
    base = tmp_path / "dehydrated"
    certdir = base / "certs" / "www.example.net"
    certdir.mkdir(parents=True)
    cert = certdir / "cert.pem"
    cert.write_bytes(make_cert_pem(["www.example.net"]))
    hook = installed_hook(tmp_path / "bin")
    with fake_server(RECORDED) as server:
        env = clean_env(**server_env(server.port), BASEDIR=str(base))
        args = [str(certdir / f) for f in ("privkey.pem", "cert.pem", "fullchain.pem", "chain.pem")]
        assert run_hook(hook, env, "deploy_cert", "www.example.net", *args, "1700000000").returncode == 0
        assert (
            run_hook(hook, env, "invalid_challenge", "api.example.net", '{"status": "invalid"}').returncode
            == 0
        )
        before = list(server.requests)
        for call in (
            [
                "this_hookscript_is_broken__dehydrated_is_working_fine__please_ignore_unknown_hooks_in_your_script"
            ],
            ["startup_hook"],
            ["deploy_challenge", "www.example.net", "token", "value"],
            ["generate_csr", "www.example.net", str(certdir), "www.example.net"],
            ["unchanged_cert", "www.example.net", *args],
            ["exit_hook"],
        ):
            quiet = run_hook(hook, env, *call)
            assert (quiet.returncode, quiet.stdout) == (0, ""), call  # generate_csr's stdout is a CSR
        assert server.requests == before
    renewals = {p["domain"]: p for p in pairs_of(server.requests, "renewal")}
    assert renewals["www.example.net"]["status"] == "renewed"
    assert renewals["www.example.net"]["sha256"] == sha_of(cert)
    assert renewals["api.example.net"]["status"] == "failed" and "sha256" not in renewals["api.example.net"]
    assert (base / "keychest_apikey").exists()


# --- for real, against pebble ---------------------------------------------------------------


@pytest.fixture
def pebble(tmp_path: Path) -> Pebble:
    require_tool("pebble")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KEYCHEST_", "RENEWED_", "FAILED_", "PEBBLE_", "LEGO_"))
    }
    peb = Pebble(tmp_path / "e2e", "certbot", env=env)
    peb.start()
    yield peb  # type: ignore[misc]
    peb.stop()


def last_renewal(server: LiveServer, key: str, domain: str) -> dict[str, str]:
    with LineClient("127.0.0.1", server.line_port) as client:
        reply = client.request("expiration", apikey=key, domain=domain)
    assert reply.ok, reply
    return dict(word.split("=", 1) for word in (reply.data or "").split())


def state_key(path: Path) -> str:
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return values["apikey"]


@pytest.mark.slow
def test_lego_against_pebble(pebble: Pebble, live_server: LiveServer, tmp_path: Path) -> None:
    lego = require_tool("lego")
    hook = installed_hook(tmp_path / "bin")
    folder = tmp_path / "lego-state"
    env = {**pebble.env, "LEGO_CA_CERTIFICATES": str(pebble.ca_file), **server_env(live_server.line_port)}
    common = [lego, "--server", pebble.directory_url, "--accept-tos", "--email", "ops@example.org",
              "--path", str(folder), "--http", "--http.port", f"127.0.0.1:{pebble.http01_port}",
              "--domains", "lego.example", "--domains", "www.lego.example"]  # fmt: skip
    done = subprocess.run(
        [*common, "run", "--run-hook", str(hook)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    key = state_key(folder / "keychest_apikey")
    cert = folder / "certificates" / "lego.example.crt"
    for name in ("lego.example", "www.lego.example"):
        facts = last_renewal(live_server, key, name)
        assert facts.get("last_renewal_status") == "renewed", (name, facts, done.stderr)
        assert facts.get("last_renewal_host") == socket.gethostname()
    renewed = subprocess.run(
        [*common, "renew", "--days", "10000", "--no-random-sleep", "--renew-hook", str(hook)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert renewed.returncode == 0, renewed.stderr
    assert sha_of(cert)  # the renewed certificate, reported again
    assert last_renewal(live_server, key, "lego.example").get("last_renewal_status") == "renewed"


@pytest.mark.slow
def test_dehydrated_against_pebble(pebble: Pebble, live_server: LiveServer, tmp_path: Path) -> None:
    dehydrated = require_tool("dehydrated")
    hook = installed_hook(tmp_path / "bin")
    base = tmp_path / "dehydrated"
    wellknown = base / "wellknown"
    wellknown.mkdir(parents=True)
    (base / "domains.txt").write_text("dh.example www.dh.example\n")
    (base / "config").write_text(
        f'CA="{pebble.directory_url}"\nBASEDIR="{base}"\nWELLKNOWN="{wellknown}"\nHOOK="{hook}"\n'
        'CHALLENGETYPE="http-01"\nCONTACT_EMAIL="ops@example.org"\n'
    )
    env = {**pebble.env, "CURL_CA_BUNDLE": str(pebble.ca_file), **server_env(live_server.line_port)}
    config = ["--config", str(base / "config")]
    accepted = subprocess.run(
        [dehydrated, *config, "--register", "--accept-terms"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    done = subprocess.run(
        [dehydrated, *config, "--cron"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    key = state_key(base / "keychest_apikey")
    for name in ("dh.example", "www.dh.example"):
        facts = last_renewal(live_server, key, name)
        assert facts.get("last_renewal_status") == "renewed", (name, facts, done.stdout)
