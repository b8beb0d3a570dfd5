"""Has the certificate been revoked? CRLs, OCSP and stapled OCSP responses.

The verification (`crl_verdict`, `ocsp_verdict`) is pure: bytes and certificates in, a
`Revocation` out, `now` passed in. No I/O: `scan.checks.RevocationChecker` fetches.

Anything that cannot be verified (garbage, a wrong signature, a CRL of another issuer, an
expired CRL, a time-out) is `unknown` with an `error`: never a `good` or `revoked` we cannot
stand behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from keychest.scan.judge import Problem, Severity

# Clocks differ: a CRL or OCSP answer dated a little in the future is still accepted.
CLOCK_SKEW = timedelta(minutes=5)
# A CRL without nextUpdate, or one already due that the server says is unchanged (304):
# asked again after this long.
RECHECK = timedelta(hours=1)
# A CRL URL that failed is not asked again for this long (1,000 certificates sharing a
# dead URL cost one time-out, not 1,000).
FAILURE_BACKOFF = timedelta(minutes=5)
# A CRL is kept at most this long even when its nextUpdate is further away.
MAX_CRL_AGE = timedelta(days=7)


class Status(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class Method(StrEnum):
    CRL = "crl"
    OCSP = "ocsp"
    STAPLED = "stapled"


@dataclass(frozen=True, slots=True)
class Revocation:
    status: Status
    method: Method | None = None
    revoked_at: datetime | None = None
    reason: str | None = None
    error: str | None = None

    @property
    def definite(self) -> bool:
        return self.status is not Status.UNKNOWN

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "method": self.method.value if self.method else None,
            "revoked_at": _iso(self.revoked_at) if self.revoked_at else None,
            "reason": self.reason,
            "error": self.error,
        }


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def unknown(method: Method | None, error: str) -> Revocation:
    return Revocation(Status.UNKNOWN, method, error=error)


# --- what the certificate says -------------------------------------------------------------


def crl_urls(cert: x509.Certificate) -> list[str]:
    """The http(s) URLs of the CRL distribution points (LDAP and friends are skipped)."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    urls = []
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith("http"):
                urls.append(name.value)
    return urls


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
        and d.access_location.value.lower().startswith("http")
    ]


def must_staple(cert: x509.Certificate) -> bool:
    """The TLS Feature extension (RFC 7633) asking for status_request: OCSP must-staple."""
    try:
        features = cert.extensions.get_extension_for_class(x509.TLSFeature).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return x509.TLSFeatureType.status_request in features


# --- signatures ----------------------------------------------------------------------------


def _verify(key: Any, signature: bytes, data: bytes, digest: hashes.HashAlgorithm | None) -> None:
    """Raises InvalidSignature (or TypeError/UnsupportedAlgorithm for keys we cannot use)."""
    if isinstance(key, rsa.RSAPublicKey) and digest is not None:
        key.verify(signature, data, padding.PKCS1v15(), digest)
    elif isinstance(key, ec.EllipticCurvePublicKey) and digest is not None:
        key.verify(signature, data, ec.ECDSA(digest))
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
    else:
        raise TypeError(f"cannot verify a signature with a {type(key).__name__}")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


# --- CRL -----------------------------------------------------------------------------------


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """DER (what RFC 5280 says a CRL URL serves) or PEM (what some servers serve anyway)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def crl_signature_problem(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> str | None:
    """Why this CRL is not `issuer`'s (another issuer, a signature that does not verify)."""
    if crl.issuer != issuer.subject:
        return f"the CRL is issued by {crl.issuer.rfc4514_string()}, not by {issuer.subject.rfc4514_string()}"
    try:
        valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        return f"the CRL's signature cannot be checked: {exc}"
    if not valid:
        return "the CRL's signature does not verify against the issuer's key"
    return None


def crl_date_problem(crl: x509.CertificateRevocationList, now: datetime) -> str | None:
    if crl.last_update_utc > now + CLOCK_SKEW:
        return f"the CRL is dated in the future ({_iso(crl.last_update_utc)})"
    next_update = crl.next_update_utc
    if next_update is not None and next_update + CLOCK_SKEW < now:
        return f"the CRL is out of date (nextUpdate {_iso(next_update)})"
    return None


def crl_problem(crl: x509.CertificateRevocationList, issuer: x509.Certificate, now: datetime) -> str | None:
    """Why this CRL cannot be used to judge `issuer`'s certificates at `now`, or None if it can."""
    return crl_signature_problem(crl, issuer) or crl_date_problem(crl, now)


def _reason(extensions: x509.Extensions) -> str | None:
    try:
        return str(extensions.get_extension_for_class(x509.CRLReason).value.reason.value)
    except (x509.ExtensionNotFound, ValueError):
        return None


def crl_lookup(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> Revocation:
    """The serial looked up in a CRL already checked with `crl_problem`."""
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return Revocation(Status.GOOD, Method.CRL)
    return Revocation(Status.REVOKED, Method.CRL, entry.revocation_date_utc, _reason(entry.extensions))


def crl_verdict(data: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: datetime) -> Revocation:
    try:
        crl = load_crl(data)
    except ValueError as exc:
        return unknown(Method.CRL, f"not a CRL: {exc}")
    problem = crl_problem(crl, issuer, now)
    if problem:
        return unknown(Method.CRL, problem)
    return crl_lookup(crl, cert)


# --- OCSP ----------------------------------------------------------------------------------


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def key_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """The hash of the subjectPublicKey BIT STRING's contents, as OCSP's CertID uses it."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bits = _spki_bit_string(spki)
    digest = hashes.Hash(algorithm)
    digest.update(bits)
    return digest.finalize()


def _der_item(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER item at `offset`."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    return tag, start, start + length


def _spki_bit_string(spki: bytes) -> bytes:
    _, start, _ = _der_item(spki, 0)  # SEQUENCE
    _, _, algorithm_end = _der_item(spki, start)  # AlgorithmIdentifier
    _, bits_start, bits_end = _der_item(spki, algorithm_end)  # BIT STRING
    return spki[bits_start + 1 : bits_end]  # without the unused-bits byte


def _responder(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> x509.Certificate | None:
    """The certificate whose key signed the response: the issuer itself, or a delegated
    responder certificate in the response, issued by the issuer for OCSP signing."""

    def named(cert: x509.Certificate) -> bool:
        if response.responder_name is not None:
            return response.responder_name == cert.subject
        return response.responder_key_hash == key_hash(cert, hashes.SHA1())

    if named(issuer):
        return issuer
    for candidate in response.certificates:
        if not named(candidate) or not _signed_by(candidate, issuer):
            continue
        try:
            usages = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (x509.ExtensionNotFound, ValueError):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in usages:
            return candidate
    return None


def ocsp_verdict(
    data: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: datetime, method: Method = Method.OCSP
) -> Revocation:
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError as exc:
        return unknown(method, f"not an OCSP response: {exc}")
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return unknown(method, f"OCSP responder answered {response.response_status.name.lower()}")
    try:
        single = next(
            (
                r
                for r in response.responses
                if r.serial_number == cert.serial_number
                and r.issuer_key_hash == key_hash(issuer, r.hash_algorithm)
                and r.issuer_name_hash == _name_hash(issuer, r.hash_algorithm)
            ),
            None,
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        return unknown(method, f"OCSP response cannot be read: {exc}")
    if single is None:
        return unknown(method, "the OCSP response is not about this certificate")
    signer = _responder(response, issuer)
    if signer is None:
        return unknown(method, "OCSP response signed by neither the issuer nor its delegated responder")
    try:
        _verify(
            signer.public_key(),
            response.signature,
            response.tbs_response_bytes,
            response.signature_hash_algorithm,
        )
    except (InvalidSignature, TypeError, ValueError, UnsupportedAlgorithm):
        return unknown(method, "the OCSP response's signature does not verify")
    if single.this_update_utc > now + CLOCK_SKEW:
        return unknown(method, f"the OCSP response is dated in the future ({_iso(single.this_update_utc)})")
    next_update = single.next_update_utc
    if next_update is not None and next_update + CLOCK_SKEW < now:
        return unknown(method, f"the OCSP response is out of date (nextUpdate {_iso(next_update)})")
    if single.certificate_status == ocsp.OCSPCertStatus.GOOD:
        return Revocation(Status.GOOD, method)
    if single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason.value if single.revocation_reason else None
        return Revocation(Status.REVOKED, method, single.revocation_time_utc, reason)
    return unknown(method, "the OCSP responder does not know this certificate")


def _name_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(cert.subject.public_bytes())
    return digest.finalize()


def ocsp_next_update(data: bytes) -> datetime | None:
    try:
        response = ocsp.load_der_ocsp_response(data)
        return (
            response.next_update_utc
            if response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            else None
        )
    except ValueError:
        return None


# --- problems ------------------------------------------------------------------------------


def problems(revocation: Revocation | None, leaf: x509.Certificate, stapled: bool) -> list[Problem]:
    found = []
    if revocation is not None and revocation.status is Status.REVOKED:
        when = f" on {revocation.revoked_at:%Y-%m-%d %H:%M} UTC" if revocation.revoked_at else ""
        why = f" ({revocation.reason})" if revocation.reason else ""
        how = revocation.method.value if revocation.method else "?"
        found.append(
            Problem("revoked", Severity.CRITICAL, f"certificate was revoked{when}{why}, says the {how}")
        )
    if must_staple(leaf) and not stapled:
        found.append(
            Problem(
                "must_staple_missing",
                Severity.CRITICAL,
                "certificate requires OCSP stapling (must-staple) but the server sent no OCSP response;"
                " browsers that enforce it refuse the connection",
            )
        )
    return found
