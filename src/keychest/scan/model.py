"""The scanner's data types: what a scan is asked to do and what it found. Pure: no I/O.

Kept apart from `runner` (the asyncio shell) so that configuration and the service layer
can name these types without importing the network code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from keychest.scan.ari import RenewalInfo
from keychest.scan.errors import ScanError
from keychest.scan.judge import CertFacts, State, Verdict, find_stale_deployments
from keychest.scan.revocation import Revocation
from keychest.scan.targets import Endpoint, ScanTarget


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """Everything a scan needs to know, built once by the caller (CLI flags, service config)."""

    timeout: float = 10.0  # seconds, for the DNS lookup and again for connect + handshake
    ca_file: str | None = None  # extra trust anchors (private CAs), in addition to the system's
    system_trust: bool = True  # trust the system CA bundle
    allow_private_targets: bool = False
    resolver: str | None = None  # "ip[:port]" of a DNS server; None: the system resolver
    warn_days: int = 30
    crit_days: int = 7
    max_chain_bytes: int = 256 * 1024  # bytes we read from a server before giving up on it
    concurrency: int = 100  # probes in flight at once
    per_address_concurrency: int = 8  # probes in flight against one IP address
    client_cert: str | None = None  # PEM chain offered to servers that ask for one (mutual TLS)
    client_key: str | None = None  # its private key (PEM); None: in client_cert's file
    # One more handshake, offering only TLS 1.0/1.1, after a successful one (old_protocol).
    old_protocols: bool = True
    # (host, port, address): connect there instead of resolving host (curl's --resolve).
    resolve: tuple[tuple[str, int, str], ...] = ()
    rdap: bool = False  # look up the registrable domain's registration expiry (scan.rdap)
    rdap_bootstrap: str | None = None  # RDAP bootstrap file URL; None: IANA's
    revocation: bool = True  # ask CRLs and OCSP responders (keychest scan --no-revocation)
    acme_directories: tuple[str, ...] = ()  # ACME directories of private CAs, for ARI

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.concurrency < 1 or self.per_address_concurrency < 1:
            raise ValueError("concurrency limits must be at least 1")
        if self.crit_days > self.warn_days:
            raise ValueError("crit_days must not exceed warn_days")


@dataclass(frozen=True, slots=True)
class AddressResult:
    """One (endpoint, address) outcome: a judged chain, or a classified error."""

    endpoint: Endpoint
    ip: str | None  # None when the name did not resolve
    scanned_at: datetime
    error: ScanError | None = None
    chain: tuple[CertFacts, ...] = ()  # as sent by the server, leaf first
    verdict: Verdict | None = None
    tls_version: str | None = None
    cipher: str | None = None
    elapsed: float = 0.0
    registration_expires: datetime | None = None  # the domain's, by RDAP (None: not asked or unknown)
    revocation: Revocation | None = None  # None: not checked (--no-revocation, or no certificate)
    ari: RenewalInfo | None = None  # None: no ACME directory known for the issuer, or no answer

    @property
    def state(self) -> State:
        if self.error is not None or self.verdict is None:
            return State.ERROR
        return self.verdict.state

    @property
    def leaf(self) -> CertFacts | None:
        return self.chain[0] if self.chain else None

    @property
    def target(self) -> ScanTarget | None:
        return self.endpoint.at(self.ip) if self.ip else None


def mark_stale_deployments(results: Sequence[AddressResult]) -> list[AddressResult]:
    """Add a stale_deployment warning to addresses of one endpoint serving an outdated leaf."""
    leaves: list[tuple[str, CertFacts]] = []
    for result in results:
        leaf = result.leaf
        if result.ip and leaf is not None and result.verdict is not None:
            leaves.append((result.ip, leaf))
    stale = {s.ip: s for s in find_stale_deployments(leaves)}
    if not stale:
        return list(results)
    marked = []
    for result in results:
        found = stale.get(result.ip or "")
        if found is not None and result.verdict is not None:
            result = replace(result, verdict=result.verdict.with_problem(found.problem()))
        marked.append(result)
    return marked
