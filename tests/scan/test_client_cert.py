"""Mutual TLS and TLS alerts: a server that requires a client certificate (openssl s_server
-Verify), scanned without one (client_cert_required, its certificate still reported on
TLS 1.2), with one (ok), and alerts classified by the alert whatever OpenSSL's wording."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from keychest.scan.errors import ErrorKind
from keychest.scan.model import AddressResult, ScanOptions
from keychest.scan.probe import classify_reason, tls_alert
from keychest.scan.runner import Scanner
from keychest.scan.targets import Endpoint
from tests.support.net import free_port, wait_for_port

from .certs import CertFactory
from .test_cli import keychest


@pytest.fixture(scope="module")
def pki(certs: CertFactory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mtls")
    server = certs.valid("127.0.0.1")
    client = certs.ca.issue_cert("client.test")
    files = {
        "cert": folder / "server.pem",
        "key": folder / "server.key",
        "client": folder / "client.pem",
        "client_key": folder / "client.key",
        "ca": Path(certs.ca_file),
    }
    files["cert"].write_bytes(server.chain_pem)
    files["key"].write_bytes(server.key_pem)
    files["client"].write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    files["client_key"].write_bytes(client.private_key_pem.bytes())
    stranger = trustme.CA().issue_cert("client.test")  # from a CA the server does not know
    files["stranger"] = folder / "stranger.pem"
    files["stranger"].write_bytes(stranger.private_key_and_cert_chain_pem.bytes())
    return files


def _s_server(pki: dict[str, Path], *flags: str) -> Iterator[int]:
    port = free_port()
    command = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(pki["cert"])]
    command += ["-key", str(pki["key"]), "-CAfile", str(pki["ca"]), "-quiet", "-verify_return_error", *flags]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def mtls12(pki: dict[str, Path]) -> Iterator[int]:
    yield from _s_server(pki, "-Verify", "1", "-tls1_2")


@pytest.fixture
def mtls13(pki: dict[str, Path]) -> Iterator[int]:
    yield from _s_server(pki, "-Verify", "1", "-tls1_3")


def _scan(port: int, pki: dict[str, Path], **options: object) -> AddressResult:
    settings = ScanOptions(timeout=5, ca_file=str(pki["ca"]), allow_private_targets=True, **options)  # type: ignore[arg-type]
    [result] = asyncio.run(Scanner(settings).scan([Endpoint("127.0.0.1", port)]))
    return result


def test_tls12_server_wanting_a_client_cert_reports_its_certificate(
    mtls12: int, pki: dict[str, Path]
) -> None:
    result = _scan(mtls12, pki)
    assert result.error is not None and result.error.kind == ErrorKind.CLIENT_CERT_REQUIRED
    assert "--client-cert" in result.error.message
    assert result.leaf is not None and result.leaf.ip_addresses == ("127.0.0.1",)
    assert result.verdict is not None and result.verdict.trusted


def test_client_certificate_is_offered(mtls12: int, pki: dict[str, Path]) -> None:
    result = _scan(mtls12, pki, client_cert=str(pki["client"]), client_key=str(pki["client_key"]))
    assert result.error is None and result.state == "ok"


def test_cli_client_cert_flags(mtls13: int, mtls12: int, pki: dict[str, Path]) -> None:
    common = ["--json", "--allow-private-targets", "--ca-file", str(pki["ca"])]
    done = keychest(*common, f"127.0.0.1:{mtls12}")
    [row] = json.loads(done.stdout)
    assert done.returncode == 2 and row["error_kind"] == "client_cert_required" and row["sha256"]
    done = keychest(
        *common,
        "--client-cert",
        str(pki["client"]),
        "--client-key",
        str(pki["client_key"]),
        f"127.0.0.1:{mtls12}",
    )
    assert done.returncode == 0, done.stdout
    # TLS 1.3: the server asks after its Finished; our side of the handshake is over by then,
    # so the certificate is judged as on any other server.
    done = keychest(*common, f"127.0.0.1:{mtls13}")
    assert json.loads(done.stdout)[0]["sha256"]
    bad = keychest(*common, "--client-cert", str(pki["client"]), "--client-key", str(pki["key"]), "a.test")
    assert bad.returncode == 2 and "client certificate" in bad.stderr


@pytest.mark.parametrize(
    ("text", "alert"),
    [
        ("sslv3 alert handshake failure", "handshake failure"),  # OpenSSL 1.1 - 3.1
        ("tlsv1 alert unknown ca", "unknown ca"),
        ("tlsv13 alert certificate required", "certificate required"),
        ("tlsv1 unrecognized name", "unrecognized name"),
        ("tls alert handshake failure", "handshake failure"),  # OpenSSL 3.2+ (cryptography's)
        ("tls alert bad certificate", "bad certificate"),
        ("ssl/tls alert number 40", "handshake failure"),
        ("wrong version number", None),
        ("unexpected eof while reading", None),
    ],
)
def test_alert_names_in_every_wording(text: str, alert: str | None) -> None:
    assert tls_alert(text) == alert
    assert (classify_reason(text).error.kind == ErrorKind.TLS_ALERT) is (alert is not None)


def test_alert_from_the_system_openssl_and_the_bundled_one(mtls12: int, pki: dict[str, Path]) -> None:
    # The system OpenSSL (Python's ssl module) names the alert its way...
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        pytest.raises(ssl.SSLError) as caught,
        socket.create_connection(("127.0.0.1", mtls12), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.recv(1)
    assert tls_alert(str(caught.value)) == "handshake failure", str(caught.value)
    # ...and the probe, on cryptography's bundled OpenSSL, its own: both are tls_alert.
    result = _scan(mtls12, pki, client_cert=str(pki["stranger"]))
    assert result.error is not None and result.error.kind == ErrorKind.TLS_ALERT, result.error
    assert "refused our client certificate" in result.error.message
    assert result.leaf is not None  # still the server's certificate


def test_serve_refuses_a_bad_client_pair_at_start(pki: dict[str, Path], tmp_path: Path) -> None:
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "keychest", "serve", "--data-dir", str(tmp_path),
         "--client-cert", str(pki["client"]), "--client-key", str(pki["key"])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--client-cert" in done.stderr and "cannot use client certificate" in done.stderr
