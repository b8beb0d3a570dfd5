"""Scan failures are results, not exceptions: each one is classified so alerts and
dashboards can tell "the name is gone" from "the server is down" from "it is not TLS"."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorKind(StrEnum):
    DNS = "dns"  # the lookup itself failed: NXDOMAIN, SERVFAIL, resolver time-out
    NO_ADDRESS = "no_address"  # the name exists but has no A or AAAA record
    BLOCKED = "blocked"  # the private-address guard refused the address
    REFUSED = "refused"  # TCP connection refused
    UNREACHABLE = "unreachable"  # other connect failures: no route, network down
    TIMEOUT = "timeout"  # connect or handshake did not finish before the deadline
    TLS_ALERT = "tls_alert"  # the server answered with a TLS alert
    HANDSHAKE = "handshake"  # the handshake failed otherwise (closed early, protocol error)
    GARBAGE = "garbage"  # the server does not speak TLS at all
    TOO_LARGE = "too_large"  # the server sent more handshake bytes than we accept
    STARTTLS_REFUSED = "starttls_refused"  # the plain-text protocol never gave the go-ahead for TLS
    CLIENT_CERT_REQUIRED = "client_cert_required"  # mutual TLS, and we had no client certificate to give


@dataclass(frozen=True, slots=True)
class ScanError:
    kind: ErrorKind
    message: str

    def __str__(self) -> str:
        return self.message


class ScanFailure(Exception):
    """Raised inside the scanner's edges, turned into a `ScanError` result before it leaves."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.error = ScanError(kind, message)
