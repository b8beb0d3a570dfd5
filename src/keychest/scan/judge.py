"""Certificate facts and verdicts: plain functions over plain data.

No sockets and no clock: `now` is passed in, the trust store is an object built once from
files and then only consulted. Everything a scan concludes about a certificate (expired?
trusted? right name? weak?) is decided here, so it can be tested with made-up chains.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from OpenSSL import crypto

from keychest.scan.targets import parse_ip

# Browsers and OpenSSL's default security level refuse these; a server using them is broken
# for most clients even when the certificate is otherwise fine.
MIN_RSA_BITS = 2048
MIN_EC_BITS = 224
_WEAK_HASHES = ("sha1", "md5")

_SIGNATURE_NAMES = {
    oid: (oid._name if oid._name != "Unknown OID" else name.lower().replace("_", "-"))
    for name, oid in vars(SignatureAlgorithmOID).items()
    if isinstance(oid, x509.ObjectIdentifier)
}

# OpenSSL verify error codes we explain in plainer words.
_X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
_X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
_X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN = 19
# Dates are judged by us, against the `now` we are given, not by OpenSSL against its clock.
_X509_V_FLAG_NO_CHECK_TIME = 0x200000


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What one certificate says, extracted once from its DER encoding."""

    der: bytes
    sha256: str  # hex, lower case, of the DER encoding
    subject: str  # RFC 4514
    issuer: str  # RFC 4514
    issuer_organization: str | None
    serial: str  # hex
    not_before: datetime  # aware, UTC
    not_after: datetime  # aware, UTC
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    key_type: str  # RSA, EC, Ed25519, Ed448, DSA
    key_bits: int
    key_curve: str | None
    signature_algorithm: str
    signature_hash: str | None  # e.g. sha256; None for Ed25519 and unknown algorithms
    is_ca: bool
    self_signed: bool
    is_lets_encrypt: bool
    purpose_error: str | None = None  # why its (extended) key usage forbids a TLS server's use

    @property
    def pem(self) -> str:
        return ssl.DER_cert_to_PEM_cert(self.der)

    @property
    def subject_alt_names(self) -> tuple[str, ...]:
        return self.dns_names + self.ip_addresses

    @property
    def issuer_name(self) -> str:
        """A short issuer name for tables: organisation, else the whole RFC 4514 string."""
        return self.issuer_organization or self.issuer


def _attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _key_facts(cert: x509.Certificate) -> tuple[str, int, str | None]:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "unknown", 0, None
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size, None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size, key.curve.name
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256, None
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456, None
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size, None
    return type(key).__name__, 0, None


def _signature_facts(cert: x509.Certificate) -> tuple[str, str | None]:
    oid = cert.signature_algorithm_oid
    name = _SIGNATURE_NAMES.get(oid, oid.dotted_string)
    try:
        digest = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        digest = None
    hash_name = digest.name if isinstance(digest, hashes.HashAlgorithm) else None
    if oid == SignatureAlgorithmOID.RSASSA_PSS and hash_name:
        name = f"{name}({hash_name})"
    return name, hash_name


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # An algorithm cryptography won't verify (SHA-1, say): the names have to do.
        return True
    return True


def _subject_alt_names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return (), ()
    dns_names = tuple(san.get_values_for_type(x509.DNSName))
    ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return dns_names, ips


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _purpose_error(cert: x509.Certificate, key_type: str) -> str | None:
    """Why a TLS client would refuse this certificate for a server, by its extended key usage
    (serverAuth or anyExtendedKeyUsage needed when present) or its key usage (the key must
    be allowed to sign, or for RSA to encipher the key exchange, or for EC to agree on it)."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        eku = None
    if eku is not None and not {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    } & set(eku):
        names = ", ".join(oid._name for oid in eku) or "none"
        return f"its extended key usage ({names}) does not include serverAuth (TLS server authentication)"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    allowed = usage.digital_signature
    if key_type == "RSA":
        allowed = allowed or usage.key_encipherment
    elif key_type == "EC":
        allowed = allowed or usage.key_agreement
    if not allowed:
        return f"its key usage forbids the {key_type} key any TLS key exchange (no digitalSignature)"
    return None


def cert_facts(der: bytes) -> CertFacts:
    """Parse one DER certificate. Raises ValueError if it is not a certificate."""
    cert = x509.load_der_x509_certificate(der)
    key_type, key_bits, curve = _key_facts(cert)
    signature, signature_hash = _signature_facts(cert)
    dns_names, ips = _subject_alt_names(cert)
    organization = _attribute(cert.issuer, NameOID.ORGANIZATION_NAME)
    return CertFacts(
        der=der,
        sha256=hashlib.sha256(der).hexdigest(),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        issuer_organization=organization,
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=dns_names,
        ip_addresses=ips,
        key_type=key_type,
        key_bits=key_bits,
        key_curve=curve,
        signature_algorithm=signature,
        signature_hash=signature_hash,
        is_ca=_is_ca(cert),
        self_signed=_self_signed(cert),
        is_lets_encrypt=organization is not None and "let's encrypt" in organization.lower(),
        purpose_error=_purpose_error(cert, key_type),
    )


@functools.lru_cache(maxsize=4096)
def _ca_facts(der: bytes) -> CertFacts:
    return cert_facts(der)


def chain_facts(chain: Iterable[bytes]) -> tuple[CertFacts, ...]:
    """Facts of a chain, leaf first. The same few intermediates and roots sit behind most
    leaves, so their facts are remembered; leaves are parsed afresh each time."""
    facts: list[CertFacts] = []
    for position, der in enumerate(chain):
        facts.append(cert_facts(der) if position == 0 else _ca_facts(der))
    return tuple(facts)


# --- trust ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustResult:
    trusted: bool
    error: str | None  # OpenSSL's reason, in plain words where we know better ones
    path: tuple[bytes, ...]  # DER, leaf to anchor, when trusted


class TrustStore:
    """Trust anchors: the system's CA bundle and/or extra CA files (private CAs).

    Loaded once and then only read. Dates are not checked here (NO_CHECK_TIME): the judge
    checks every element's dates against its own `now`, so "untrusted" means "no path to
    an anchor", never "expired".
    """

    def __init__(self, ca_files: Sequence[str | Path] = (), system: bool = True) -> None:
        self._store = crypto.X509Store()
        self._store.set_flags(_X509_V_FLAG_NO_CHECK_TIME)
        self.sources: list[str] = []
        if system:
            paths = ssl.get_default_verify_paths()
            for candidate in (paths.cafile, paths.openssl_cafile):
                if candidate and Path(candidate).is_file():
                    self._store.load_locations(candidate)
                    self.sources.append(candidate)
                    break
        for ca_file in ca_files:
            path = Path(ca_file)
            if not path.is_file():
                raise FileNotFoundError(f"CA file not found: {path}")
            try:
                self._store.load_locations(str(path))
            except crypto.Error as exc:
                raise ValueError(f"cannot read CA file {path}: {exc}") from exc
            self.sources.append(str(path))

    def verify(self, chain: Sequence[bytes]) -> TrustResult:
        """Is there a path from chain[0] to an anchor, using chain[1:] as intermediates?"""
        if not chain:
            return TrustResult(False, "no certificate", ())
        try:
            loaded = [crypto.load_certificate(crypto.FILETYPE_ASN1, der) for der in chain]
        except crypto.Error as exc:
            return TrustResult(False, f"unreadable certificate: {exc}", ())
        context = crypto.X509StoreContext(self._store, loaded[0], loaded[1:])
        try:
            path = context.get_verified_chain()
        except crypto.X509StoreContextError as exc:
            return TrustResult(False, _explain_verify_error(exc, loaded), ())
        return TrustResult(True, None, tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in path))


def _ca_issuers(cert: x509.Certificate) -> list[str]:
    """The caIssuers URLs of the AIA extension: where the issuer's certificate is published."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [
        str(d.access_location.value)
        for d in aia
        if d.access_method == x509.oid.AuthorityInformationAccessOID.CA_ISSUERS
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


PRIVATE_CA_HINT = "a private CA? add its certificate with --ca-file"


def _explain_verify_error(exc: crypto.X509StoreContextError, chain: Sequence[crypto.X509]) -> str:
    errors = exc.errors if isinstance(exc.errors, list) and len(exc.errors) >= 3 else [None, None, str(exc)]
    code, depth, message = errors[:3]
    last = chain[-1].to_cryptography()
    issuer = last.issuer.rfc4514_string()
    if code == _X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY and len(chain) == 1:
        # A lone leaf: either the server left out the intermediate, or the issuer is a root we
        # do not trust. Public CAs never sign leaves with a root and always publish their
        # intermediates (AIA caIssuers); private CAs (mkcert, step-ca, trustme) usually do not.
        published = _ca_issuers(last)
        if published:
            return (
                f"{message}: the server sent no intermediate certificate"
                f" (its issuer, {issuer}, is published at {published[0]})"
            )
        return f"{message}: issued by {issuer}, which is not a trusted CA ({PRIVATE_CA_HINT})"
    if code == _X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        return (
            f"{message}: the chain ends at {issuer}, which is not a trusted CA"
            f" (an intermediate missing, or {PRIVATE_CA_HINT})"
        )
    if code == _X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        return "self-signed certificate"
    if code == _X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        return f"chain ends in an untrusted self-signed CA, {issuer} ({PRIVATE_CA_HINT})"
    return f"{message} (depth {depth})" if depth else str(message)


# --- verdicts ------------------------------------------------------------------------------


class State(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    ERROR = "error"  # no certificate to judge: DNS, connect or handshake failure

    @property
    def exit_status(self) -> int:
        """Monitoring-plugin convention: 0 ok, 1 warning, 2 critical (and errors)."""
        return {State.OK: 0, State.WARNING: 1}.get(self, 2)


class Severity(IntEnum):
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True, slots=True)
class Problem:
    code: str  # stable identifier: expired, expires_soon, untrusted, hostname_mismatch, ...
    severity: Severity
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity.name.lower(), "message": self.message}


@dataclass(frozen=True, slots=True)
class Verdict:
    state: State
    days_left: int  # of the leaf, whole days rounded down (see days_left())
    trusted: bool
    trust_error: str | None
    hostname_ok: bool
    problems: tuple[Problem, ...] = ()
    path: tuple[CertFacts, ...] = field(default=(), repr=False)  # verified path, leaf to anchor
    # The first expiry on the verified path (the chain as sent when untrusted), anchor
    # included: blackbox_exporter's probe_ssl_earliest_cert_expiry. `days_left` stays the leaf's.
    earliest_not_after: datetime | None = None
    earliest_days_left: int | None = None

    def with_problem(self, problem: Problem) -> Verdict:
        problems = self.problems + (problem,)
        return replace(self, problems=problems, state=_state_of(problems))


def days_left(not_after: datetime, now: datetime) -> int:
    """Whole days until `not_after`, rounded down (towards minus infinity).

    23 hours left is 0 days; expired one hour ago is -1. So `days_left < N` is exactly
    "less than N full days of validity remain", and a negative value means expired.
    """
    return (not_after - now) // timedelta(days=1)


def _normalise_dns(name: str) -> str:
    return name.rstrip(".").lower()


def hostname_matches(hostname: str, dns_names: Iterable[str], ip_addresses: Iterable[str] = ()) -> bool:
    """RFC 6125 matching against subjectAltName only (the CN is ignored, as browsers do).

    A wildcard is accepted only as the whole left-most label and matches exactly one
    label: `*.example.com` matches `a.example.com`, not `example.com` or `a.b.example.com`.
    """
    address = parse_ip(hostname)
    if address is not None:
        return any(parse_ip(ip) == address for ip in ip_addresses)
    host = _normalise_dns(hostname)
    host_first, _, host_rest = host.partition(".")
    for name in dns_names:
        name = _normalise_dns(name)
        if name == host:
            return True
        if name.startswith("*.") and host_rest:
            rest = name[2:]
            # "*.com" style wildcards are refused: the rest must have at least two labels.
            if "." in rest and "*" not in rest and host_rest == rest and host_first:
                return True
    return False


def _weak_key(facts: CertFacts) -> str | None:
    if facts.key_type in ("RSA", "DSA") and facts.key_bits < MIN_RSA_BITS:
        return f"{facts.key_type} key of {facts.key_bits} bits (minimum {MIN_RSA_BITS})"
    if facts.key_type == "EC" and facts.key_bits < MIN_EC_BITS:
        return f"EC key of {facts.key_bits} bits (minimum {MIN_EC_BITS})"
    return None


def _state_of(problems: Iterable[Problem]) -> State:
    worst = max((p.severity for p in problems), default=None)
    if worst is None:
        return State.OK
    return State.CRITICAL if worst == Severity.CRITICAL else State.WARNING


def expiry_severity(not_after: datetime, now: datetime, warn_days: int, crit_days: int) -> Severity | None:
    """The scanner's severity of a certificate's dates alone: the one every view shows.

    Critical once expired or when `days_left` (rounded down) is under `crit_days`, a warning
    under `warn_days`, else None. Mails, the dashboard and metrics use this rather than
    their own arithmetic, so "4 days" is critical or not in the same way everywhere.
    """
    left = days_left(not_after, now)
    if now >= not_after or left < crit_days:
        return Severity.CRITICAL
    if left < warn_days:
        return Severity.WARNING
    return None


def _expiry_problem(
    facts: CertFacts, now: datetime, warn_days: int, crit_days: int, what: str, prefix: str = ""
) -> Problem | None:
    severity = expiry_severity(facts.not_after, now, warn_days, crit_days)
    if severity is None:
        return None
    if now >= facts.not_after:
        return Problem(
            f"{prefix}expired", Severity.CRITICAL, f"{what} expired on {facts.not_after:%Y-%m-%d %H:%M} UTC"
        )
    left = days_left(facts.not_after, now)
    unit = "day" if left == 1 else "days"
    return Problem(f"{prefix}expires_soon", severity, f"{what} expires in {left} {unit}")


def chain_order_error(chain: Sequence[CertFacts]) -> str | None:
    """Why the chain as sent is out of order (RFC 8446 4.4.2 asks each certificate to
    certify the one before it): some certificate is followed by another than its issuer,
    while its issuer was sent elsewhere in the chain. Extra certificates that certify
    nothing sent (a cross-signed root at the end) are not an order problem."""
    subjects = {c.subject: index for index, c in enumerate(chain)}
    for index, facts in enumerate(chain[:-1]):
        if facts.self_signed:
            continue
        issuer_at = subjects.get(facts.issuer)
        if issuer_at is not None and issuer_at != index + 1 and chain[index + 1].subject != facts.issuer:
            what = "the leaf" if index == 0 else f"chain certificate {index} ({facts.subject})"
            return f"chain sent out of order: the issuer of {what} is sent at position {issuer_at}"
    if len(chain) > 1 and chain[0].is_ca and any(not c.is_ca for c in chain[1:]):
        return "chain sent out of order: the leaf is not first"
    return None


def judge(
    chain: Sequence[CertFacts],
    *,
    hostname: str,
    now: datetime,
    trust_store: TrustStore,
    warn_days: int = 30,
    crit_days: int = 7,
) -> Verdict:
    """Judge the chain a server sent for `hostname` at time `now`.

    chain[0] is the leaf. Every problem found is listed; the state is the worst of them.
    """
    if not chain:
        raise ValueError("cannot judge an empty chain")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    leaf = chain[0]
    problems: list[Problem] = []

    trust = trust_store.verify([c.der for c in chain])
    sent = {c.sha256: c for c in chain}
    path = tuple(sent.get(hashlib.sha256(der).hexdigest()) or _ca_facts(der) for der in trust.path)
    if not trust.trusted:
        if leaf.self_signed:
            problems.append(
                Problem(
                    "self_signed",
                    Severity.CRITICAL,
                    "self-signed certificate, not trusted (to trust this one, add it with --ca-file)",
                )
            )
        else:
            problems.append(Problem("untrusted", Severity.CRITICAL, f"not trusted: {trust.error}"))

    hostname_ok = hostname_matches(hostname, leaf.dns_names, leaf.ip_addresses)
    if not hostname_ok:
        names = ", ".join(leaf.subject_alt_names) or "no subjectAltName"
        problems.append(
            Problem(
                "hostname_mismatch", Severity.CRITICAL, f"certificate is not valid for {hostname} ({names})"
            )
        )

    if now < leaf.not_before:
        problems.append(
            Problem(
                "not_yet_valid", Severity.CRITICAL, f"not valid before {leaf.not_before:%Y-%m-%d %H:%M} UTC"
            )
        )
    expiry = _expiry_problem(leaf, now, warn_days, crit_days, "certificate")
    if expiry:
        problems.append(expiry)
    if leaf.purpose_error:
        problems.append(
            Problem(
                "wrong_purpose",
                Severity.CRITICAL,
                f"certificate is not for TLS servers: {leaf.purpose_error}",
            )
        )
    order = chain_order_error(chain)
    if order:
        problems.append(Problem("chain_order", Severity.WARNING, order))

    # The rest of the chain: the verified path when there is one (what clients will use),
    # else what the server sent.
    others = path[1:] if trust.trusted else tuple(chain[1:])
    for position, facts in enumerate(others, 1):
        what = f"chain certificate {position} ({facts.subject})"
        if now < facts.not_before:
            problems.append(Problem("chain_not_yet_valid", Severity.CRITICAL, f"{what} is not valid yet"))
        problem = _expiry_problem(facts, now, warn_days, crit_days, what, prefix="chain_")
        if problem:
            problems.append(problem)

    # A trust anchor's self-signature is never checked by clients, so it cannot be weak.
    for position, facts in enumerate((leaf, *others)):
        what = "certificate" if position == 0 else f"chain certificate {position} ({facts.subject})"
        anchor = facts.self_signed and position > 0
        if not anchor and facts.signature_hash in _WEAK_HASHES:
            problems.append(
                Problem(
                    "weak_signature", Severity.CRITICAL, f"{what} is signed with {facts.signature_algorithm}"
                )
            )
        weak = _weak_key(facts)
        if weak:
            problems.append(Problem("weak_key", Severity.CRITICAL, f"{what} has a {weak}"))

    earliest = min(c.not_after for c in (leaf, *others))
    return Verdict(
        state=_state_of(problems),
        days_left=days_left(leaf.not_after, now),
        trusted=trust.trusted,
        trust_error=trust.error,
        hostname_ok=hostname_ok,
        problems=tuple(problems),
        path=path,
        earliest_not_after=earliest,
        earliest_days_left=days_left(earliest, now),
    )


def old_protocol_problem(version: str) -> Problem:
    """A server that still accepts TLS 1.0 or 1.1 (found by a handshake offering only those)."""
    return Problem(
        "old_protocol",
        Severity.WARNING,
        f"server accepts {version}, deprecated since 2021 (RFC 8996): allow TLS 1.2 and 1.3 only",
    )


# --- across addresses ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaleDeployment:
    """An address of a name still serving an older certificate than another address does."""

    ip: str
    sha256: str
    not_before: datetime
    current_ip: str
    current_sha256: str
    current_not_before: datetime

    def problem(self) -> Problem:
        return Problem(
            "stale_deployment",
            Severity.WARNING,
            f"{self.ip} serves an older certificate (issued {self.not_before:%Y-%m-%d})"
            f" than {self.current_ip} (issued {self.current_not_before:%Y-%m-%d}): missed renewal?",
        )


def find_stale_deployments(leaves: Iterable[tuple[str, CertFacts]]) -> list[StaleDeployment]:
    """Given (address, leaf) pairs for one name and port, find addresses left behind.

    The newest certificate is the one with the latest not_before; every address serving a
    different certificate issued earlier is stale. Different certificates issued at the same
    moment are not called stale: nothing says which one is current.
    """
    observed = list(leaves)
    if not observed:
        return []
    current_ip, current = max(observed, key=lambda pair: pair[1].not_before)
    return [
        StaleDeployment(ip, facts.sha256, facts.not_before, current_ip, current.sha256, current.not_before)
        for ip, facts in observed
        if facts.sha256 != current.sha256 and facts.not_before < current.not_before
    ]


def utc_now() -> datetime:
    """For shells only: the judge itself never reads the clock."""
    return datetime.now(UTC)
