"""Certificates for tests: trustme for the ordinary ones, `cryptography` for what trustme can't make
(SHA-1 signatures, RSA-1024 keys, self-signed leaves, huge chains)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

UTC = dt.UTC


@dataclass(frozen=True)
class ServerCert:
    """What a TLS server needs: the chain it sends (leaf first) and the leaf's private key."""

    chain_pem: bytes
    key_pem: bytes

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.chain_pem)[0]

    @classmethod
    def from_trustme(cls, leaf: trustme.LeafCert, with_intermediates: bool = True) -> ServerCert:
        pems = [blob.bytes() for blob in leaf.cert_chain_pems]
        if not with_intermediates:
            pems = pems[:1]
        return cls(b"".join(pems), leaf.private_key_pem.bytes())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(general)


# DER AlgorithmIdentifiers of ecdsa-with-SHA256 and ecdsa-with-SHA1.
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_ECDSA_SHA1 = bytes.fromhex("300906072a8648ce3d0401")


def _der(tag: int, body: bytes) -> bytes:
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    length = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _der_body(der: bytes) -> bytes:
    if der[1] < 0x80:
        return der[2:]
    return der[2 + (der[1] & 0x7F) :]


class CertFactory:
    """One test CA (trusted through `ca_file`) and the certificates the scanner tests need."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA(organization_name="Keychest Test CA")
        self.ca_file = directory / "test-ca.pem"
        self.ca_file.write_bytes(self.ca.cert_pem.bytes())
        self._ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        self._ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), password=None)

    @staticmethod
    def now() -> dt.datetime:
        return dt.datetime.now(UTC)

    def valid(self, *names: str, days: float = 90) -> ServerCert:
        now = self.now()
        leaf = self.ca.issue_cert(
            *names, not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=days)
        )
        return ServerCert.from_trustme(leaf)

    def issued(self, *names: str, not_before: dt.datetime, not_after: dt.datetime) -> ServerCert:
        return ServerCert.from_trustme(self.ca.issue_cert(*names, not_before=not_before, not_after=not_after))

    def expired(self, *names: str) -> ServerCert:
        now = self.now()
        return self.issued(
            *names, not_before=now - dt.timedelta(days=100), not_after=now - dt.timedelta(days=10)
        )

    def missing_intermediate(self, *names: str) -> ServerCert:
        """Issued by an intermediate CA the server does not send, and published (AIA
        caIssuers) as a public CA's leaves are."""
        intermediate = self.ca.create_child_ca()
        issuer = x509.load_pem_x509_certificate(intermediate.cert_pem.bytes())
        issuer_key = serialization.load_pem_private_key(intermediate.private_key_pem.bytes(), password=None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = self.now()
        aia = x509.AuthorityInformationAccess(
            [
                x509.AccessDescription(
                    x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                    x509.UniformResourceIdentifier("http://ca.keychest.test/intermediate.der"),
                )
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=90))
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(aia, critical=False)
            .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return ServerCert(_pem(cert), _key_pem(key))

    def private_root_leaf(self, *names: str) -> ServerCert:
        """Signed directly by a root nobody trusts (a private CA; no AIA, as mkcert's)."""
        return ServerCert.from_trustme(trustme.CA().issue_cert(*names))

    def with_intermediate(self, *names: str) -> ServerCert:
        intermediate = self.ca.create_child_ca()
        return ServerCert.from_trustme(intermediate.issue_cert(*names))

    def custom(
        self,
        *names: str,
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
        digest: hashes.HashAlgorithm | None = None,
        self_signed: bool = False,
        days: float = 90,
        issuer_organization: str | None = None,
        extra_chain: tuple[bytes, ...] = (),
        extensions: tuple[x509.ExtensionType, ...] = (),
    ) -> ServerCert:
        """A leaf signed by the test CA (or by itself) with the key, digest and extra
        (non-critical) extensions given."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = self.now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        if self_signed:
            issuer_name, signing_key = subject, key
        else:
            issuer_name, signing_key = self._ca_cert.subject, self._ca_key
        if issuer_organization:
            issuer_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, issuer_organization)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        cert = builder.sign(signing_key, digest or hashes.SHA256())  # type: ignore[arg-type]
        return ServerCert(_pem(cert) + b"".join(extra_chain), _key_pem(key))

    def sha1_signed(self, *names: str) -> ServerCert:
        """A leaf signed by the test CA with ecdsa-with-SHA1.

        cryptography refuses to build SHA-1 certificates, so one is built with SHA-256 and
        its to-be-signed part rewritten and signed again by hand.
        """
        good = self.custom(*names)
        cert = x509.load_pem_x509_certificate(good.chain_pem)
        tbs_body = _der_body(cert.tbs_certificate_bytes)
        if _ECDSA_SHA256 not in tbs_body:
            raise RuntimeError("expected an ECDSA test CA")
        tbs = _der(0x30, tbs_body.replace(_ECDSA_SHA256, _ECDSA_SHA1, 1))
        assert isinstance(self._ca_key, ec.EllipticCurvePrivateKey)
        signature = self._ca_key.sign(tbs, ec.ECDSA(hashes.SHA1()))
        der = _der(0x30, tbs + _ECDSA_SHA1 + _der(0x03, b"\x00" + signature))
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        return ServerCert(pem, good.key_pem)

    def rsa1024(self, *names: str) -> ServerCert:
        return self.custom(*names, key=rsa.generate_private_key(65537, 1024))

    def self_signed(self, *names: str) -> ServerCert:
        return self.custom(*names, self_signed=True)

    def huge_chain(self, *names: str, total_bytes: int = 1024 * 1024) -> ServerCert:
        """A leaf followed by padding certificates adding up to about `total_bytes`."""
        padding: list[bytes] = []
        size = 0
        chunk = 60_000
        index = 0
        while size < total_bytes:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"padding {index}")])
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(self.now() - dt.timedelta(days=1))
                .not_valid_after(self.now() + dt.timedelta(days=30))
                .add_extension(
                    x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x00" * chunk),
                    critical=False,
                )
                .sign(key, hashes.SHA256())
            )
            padding.append(_pem(cert))
            size += chunk
            index += 1
        return self.custom(*names, extra_chain=tuple(padding))
