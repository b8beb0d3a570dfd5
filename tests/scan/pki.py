"""A tiny CA for revocation and ARI tests: leaves with CRL and OCSP URLs, CRLs, OCSP answers."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

UTC = dt.UTC
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _name(common_name: str, organization: str = "keychest test") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class MiniCA:
    common_name: str = "keychest test CA"
    organization: str = "keychest test"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        name = _name(self.common_name, self.organization)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=365))
            .not_valid_after(NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def leaf(
        self,
        host: str = "www.example.net",
        *,
        crl_url: str | None = None,
        ocsp_url: str | None = None,
        must_staple: bool = False,
        not_before: dt.datetime | None = None,
        days: int = 90,
        serial: int | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or NOW - dt.timedelta(days=10)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(host))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_general_name(host)]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if crl_url:
            point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
            builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
        if ocsp_url:
            access = x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
            )
            builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
        if must_staple:
            builder = builder.add_extension(
                x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False
            )
        return builder.sign(self.key, hashes.SHA256()), key

    def crl(
        self,
        revoked: dict[int, x509.ReasonFlags | None] | None = None,
        *,
        this_update: dt.datetime = NOW - dt.timedelta(hours=1),
        next_update: dt.datetime | None = NOW + dt.timedelta(days=1),
        signer: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject).last_update(this_update)
        )
        if next_update is not None:
            builder = builder.next_update(next_update)
        for serial, reason in (revoked or {}).items():
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(NOW - dt.timedelta(days=1))
            )
            if reason is not None:
                entry = entry.add_extension(x509.CRLReason(reason), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(signer or self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def ocsp_response(
        self,
        leaf: x509.Certificate,
        status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
        *,
        responder: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
        this_update: dt.datetime = NOW - dt.timedelta(hours=1),
        next_update: dt.datetime = NOW + dt.timedelta(days=3),
        tamper: bool = False,
    ) -> bytes:
        revoked_at = NOW - dt.timedelta(days=1) if status == ocsp.OCSPCertStatus.REVOKED else None
        reason = x509.ReasonFlags.key_compromise if revoked_at else None
        builder = ocsp.OCSPResponseBuilder().add_response(
            leaf, self.cert, hashes.SHA1(), status, this_update, next_update, revoked_at, reason
        )
        if responder is None:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.cert)
        else:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder[0])
            builder = builder.certificates([responder[0]])
        response = builder.sign(responder[1] if responder else self.key, hashes.SHA256())
        data = response.public_bytes(serialization.Encoding.DER)
        if tamper:
            # The signature's last byte: still an ECDSA signature, no longer a valid one.
            signature = response.signature
            data = data.replace(signature, signature[:-1] + bytes([signature[-1] ^ 1]))
        return data

    def delegated_responder(
        self, issued_by: MiniCA | None = None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        issuer = issued_by or self
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("OCSP responder"))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
            .sign(issuer.key, hashes.SHA256())
        )
        return cert, key
