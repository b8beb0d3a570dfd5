"""Whole scans through `Scanner`: stapled OCSP and must-staple against a real TLS server that
staples (pyOpenSSL), ARI through --acme-directory, and the lifetime policy of public CAs."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from OpenSSL import SSL

from keychest.scan import ari
from keychest.scan.judge import TrustStore
from keychest.scan.model import AddressResult, ScanOptions
from keychest.scan.runner import Scanner
from keychest.scan.targets import Endpoint

from .pki import MiniCA, pem
from .responders import Responder
from .test_renewal_checks import AriServer

DAY = dt.timedelta(days=1)


@contextmanager
def stapling_server(
    chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey, staple: Callable[[], bytes]
) -> Iterator[int]:
    """A TLS server on 127.0.0.1 that staples whatever `staple()` returns (b"": nothing)."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate(chain[0])
    for extra in chain[1:]:
        context.add_extra_chain_cert(extra)
    context.use_privatekey(key)
    context.set_ocsp_server_callback(lambda _conn, _data: staple())
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with suppress(SSL.Error, OSError):
                conn = SSL.Connection(context, sock)
                conn.set_accept_state()
                conn.do_handshake()
                conn.shutdown()
            sock.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def scan(options: ScanOptions, port: int, trust_store: TrustStore | None = None) -> AddressResult:
    (result,) = asyncio.run(Scanner(options, trust_store).scan_endpoint(Endpoint("127.0.0.1", port)))
    assert result.error is None, result.error
    return result


def codes(result: AddressResult) -> list[str]:
    assert result.verdict is not None
    return [p.code for p in result.verdict.problems]


@pytest.fixture
def ca_file(tmp_path: Path) -> tuple[MiniCA, str]:
    ca = MiniCA()
    path = tmp_path / "ca.pem"
    path.write_bytes(pem(ca.cert))
    return ca, str(path)


def now_leaf(ca: MiniCA, **kwargs: object) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return ca.leaf("127.0.0.1", not_before=dt.datetime.now(dt.UTC) - DAY, **kwargs)  # type: ignore[arg-type]


def test_must_staple_without_a_staple_is_critical(ca_file: tuple[MiniCA, str]) -> None:
    ca, path = ca_file
    leaf, key = now_leaf(ca, must_staple=True)
    with stapling_server([leaf, ca.cert], key, lambda: b"") as port:
        result = scan(ScanOptions(allow_private_targets=True, ca_file=path), port)
    assert "must_staple_missing" in codes(result)
    assert result.state == "critical"
    assert result.revocation is not None and result.revocation.status == "unknown"


@pytest.mark.parametrize("status", [ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED])
def test_a_stapled_response_is_verified_and_used(
    ca_file: tuple[MiniCA, str], status: ocsp.OCSPCertStatus
) -> None:
    ca, path = ca_file
    leaf, key = now_leaf(ca, must_staple=True)
    now = dt.datetime.now(dt.UTC)
    staple = ca.ocsp_response(leaf, status, this_update=now - dt.timedelta(hours=1), next_update=now + DAY)
    with stapling_server([leaf, ca.cert], key, lambda: staple) as port:
        result = scan(ScanOptions(allow_private_targets=True, ca_file=path), port)
    assert result.revocation is not None and result.revocation.method == "stapled"
    assert "must_staple_missing" not in codes(result)
    if status == ocsp.OCSPCertStatus.GOOD:
        assert result.revocation.status == "good" and codes(result) == []
    else:
        assert result.revocation.status == "revoked" and "revoked" in codes(result)


def test_a_forged_staple_is_not_believed(ca_file: tuple[MiniCA, str]) -> None:
    ca, path = ca_file
    leaf, key = now_leaf(ca)
    now = dt.datetime.now(dt.UTC)
    forged = ca.ocsp_response(
        leaf,
        ocsp.OCSPCertStatus.REVOKED,
        this_update=now - dt.timedelta(hours=1),
        next_update=now + DAY,
        tamper=True,
    )
    with stapling_server([leaf, ca.cert], key, lambda: forged) as port:
        result = scan(ScanOptions(allow_private_targets=True, ca_file=path), port)
    assert result.revocation is not None and result.revocation.status == "unknown"
    assert result.revocation.error and "signature" in result.revocation.error
    assert "revoked" not in codes(result)


def test_no_revocation_skips_the_check(ca_file: tuple[MiniCA, str]) -> None:
    ca, path = ca_file
    leaf, key = now_leaf(ca)
    with stapling_server([leaf, ca.cert], key, lambda: b"") as port:
        result = scan(ScanOptions(allow_private_targets=True, ca_file=path, revocation=False), port)
    assert result.revocation is None


def test_ari_through_acme_directory(tmp_path: Path) -> None:
    tls_ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1").configure_cert(context)
    acme = MiniCA(organization="Private ACME CA")
    leaf, key = now_leaf(acme)
    # One file for both: the scanned chain's anchor and the ARI server's TLS certificate.
    path = tmp_path / "cas.pem"
    path.write_bytes(pem(acme.cert) + tls_ca.cert_pem.bytes())
    server = AriServer()
    now = dt.datetime.now(dt.UTC)
    server.windows[ari.cert_id(leaf) or ""] = (now - DAY, now + DAY, "https://ca.example/why")
    routes = {"/directory": server.directory, "*": server.renewal_info}
    with (
        Responder(routes, tls=context) as responder,
        stapling_server([leaf, acme.cert], key, lambda: b"") as port,
    ):  # type: ignore[arg-type]
        server.base = f"https://127.0.0.1:{responder.port}"
        options = ScanOptions(
            allow_private_targets=True, ca_file=str(path), acme_directories=(f"{server.base}/directory",)
        )
        result = scan(options, port)
    assert result.ari is not None and result.ari.explanation_url == "https://ca.example/why"
    assert "ari_renewal_due" in codes(result) and result.state == "warning"


def test_lifetime_policy_binds_public_cas_only(ca_file: tuple[MiniCA, str]) -> None:
    ca, path = ca_file
    leaf, key = now_leaf(ca, days=398)  # issued now: at most 200 days allowed
    with stapling_server([leaf, ca.cert], key, lambda: b"") as port:
        # The test CA standing in for the system's bundle: publicly trusted.
        public = scan(ScanOptions(allow_private_targets=True), port, TrustStore([path], system=False))
        # The same CA given with --ca-file: a private CA, free to choose lifetimes.
        private = scan(ScanOptions(allow_private_targets=True, ca_file=path), port)
    assert "lifetime_over_policy" in codes(public)
    assert "lifetime_over_policy" not in codes(private)
