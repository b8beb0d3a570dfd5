"""Certificate purpose (wrong_purpose), chain order (chain_order) and the earliest expiry
on the verified path (earliest_not_after / earliest_days_left), judged and scanned."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keychest.scan.judge import TrustStore, judge
from keychest.scan.model import ScanOptions
from keychest.scan.report import result_to_json
from keychest.scan.runner import Scanner
from keychest.scan.targets import Endpoint

from .certs import CertFactory, ServerCert
from .test_judge import codes, facts_of
from .tls_servers import TestServers

UTC = dt.UTC


@pytest.fixture(scope="module")
def trust(certs: CertFactory) -> TrustStore:
    return TrustStore([certs.ca_file], system=False)


def _judge(cert: ServerCert, trust: TrustStore, host: str = "p.test") -> object:
    return judge(facts_of(cert), hostname=host, now=dt.datetime.now(UTC), trust_store=trust)


def _key_usage(**flags: bool) -> x509.KeyUsage:
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ]
    values = {name: flags.get(name, False) for name in names}
    return x509.KeyUsage(**values)


@pytest.mark.parametrize(
    ("extensions", "wrong"),
    [
        ((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),), True),
        (
            (
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]
                ),
            ),
            True,
        ),
        ((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),), False),
        ((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]),), False),
        ((_key_usage(key_cert_sign=True),), True),  # an EC key that may not sign
        ((_key_usage(digital_signature=True),), False),
        ((), False),  # no extension: any purpose
    ],
)
def test_wrong_purpose(
    certs: CertFactory, trust: TrustStore, extensions: tuple[x509.ExtensionType, ...], wrong: bool
) -> None:
    verdict = _judge(certs.custom("p.test", extensions=extensions), trust)
    assert ("wrong_purpose" in codes(verdict)) is wrong
    if wrong:
        [problem] = [p for p in verdict.problems if p.code == "wrong_purpose"]  # type: ignore[attr-defined]
        assert problem.severity.name == "CRITICAL"
        assert verdict.state == "critical"  # type: ignore[attr-defined]


def _two_intermediates(certs: CertFactory) -> list[bytes]:
    leaf = certs.ca.create_child_ca().create_child_ca().issue_cert("p.test")
    return [blob.bytes() for blob in leaf.cert_chain_pems]  # leaf, lower, upper


def test_chain_order(certs: CertFactory, trust: TrustStore) -> None:
    pems = _two_intermediates(certs)
    key = certs.ca.create_child_ca().issue_cert("x.test").private_key_pem.bytes()
    in_order = ServerCert(b"".join(pems), key)
    reversed_ = ServerCert(pems[0] + pems[2] + pems[1], key)
    assert "chain_order" not in codes(_judge(in_order, trust))
    verdict = _judge(reversed_, trust)
    assert verdict.trusted  # type: ignore[attr-defined]  # clients still build the path
    assert "chain_order" in codes(verdict)
    assert verdict.state == "warning"  # type: ignore[attr-defined]
    leaf_last = ServerCert(pems[1] + pems[2] + pems[0], key)
    assert "chain_order" in codes(_judge(leaf_last, trust))


def _short_intermediate(certs: CertFactory, days: int, leaf_days: int) -> ServerCert:
    now = dt.datetime.now(UTC)
    ca_cert = x509.load_pem_x509_certificate(certs.ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(certs.ca.private_key_pem.bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Short-lived Intermediate")])
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days, hours=12))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p.test")]))
        .issuer_name(name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=leaf_days, hours=12))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("p.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ServerCert(
        leaf.public_bytes(pem) + intermediate.public_bytes(pem),
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def test_earliest_expiry_is_the_intermediates(certs: CertFactory, trust: TrustStore) -> None:
    verdict = _judge(_short_intermediate(certs, days=10, leaf_days=60), trust)
    assert verdict.days_left == 60  # type: ignore[attr-defined]  # the leaf's, as before
    assert verdict.earliest_days_left == 10  # type: ignore[attr-defined]
    assert "chain_expires_soon" in codes(verdict)
    plain = _judge(certs.valid("p.test", days=60), trust)
    assert plain.earliest_days_left in (59, 60)  # type: ignore[attr-defined]  # trustme's root outlives it


def test_scan_reports_earliest_and_purpose(servers: TestServers, certs: CertFactory) -> None:
    short = servers.tls(*_astuple(_short_intermediate(certs, days=10, leaf_days=60)), hosts=["127.0.0.1"])
    client_only = certs.custom(
        "p.test", extensions=(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),)
    )
    wrong = servers.tls(*_astuple(client_only), hosts=["127.0.0.1"])
    options = ScanOptions(timeout=5, ca_file=str(certs.ca_file), allow_private_targets=True)
    first, second = asyncio.run(
        Scanner(options).scan([Endpoint("127.0.0.1", short), Endpoint("127.0.0.1", wrong)])
    )
    row = result_to_json(first)
    assert row["days_left"] in (59, 60) and row["earliest_days_left"] in (9, 10)
    assert row["earliest_not_after"] < row["not_after"]
    assert "wrong_purpose" in {p["code"] for p in result_to_json(second)["problems"]}


def _astuple(cert: ServerCert) -> tuple[bytes, bytes]:
    return cert.chain_pem, cert.key_pem
