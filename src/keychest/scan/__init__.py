"""TLS certificate scanning: resolve -> guard -> probe -> judge, and reports of the results.

The scheduler's entry point is `Scanner` (long-lived: owns the trust store, the TLS context
and the concurrency limits) or the one-off `scan_endpoint(endpoint, options)`.
"""

from keychest.scan.errors import ErrorKind, ScanError
from keychest.scan.judge import (
    CertFacts,
    Problem,
    Severity,
    StaleDeployment,
    State,
    TrustStore,
    Verdict,
    cert_facts,
    days_left,
    expiry_severity,
    find_stale_deployments,
    hostname_matches,
    judge,
)
from keychest.scan.model import AddressResult, ScanOptions
from keychest.scan.probe import ProbeResult, TLSClient
from keychest.scan.runner import Scanner, scan_endpoint, scan_endpoints
from keychest.scan.targets import Endpoint, ScanTarget, TargetError, parse_endpoint, parse_target_lines

__all__ = [
    "AddressResult",
    "CertFacts",
    "Endpoint",
    "ErrorKind",
    "Problem",
    "ProbeResult",
    "ScanError",
    "ScanOptions",
    "ScanTarget",
    "Scanner",
    "Severity",
    "StaleDeployment",
    "State",
    "TargetError",
    "TLSClient",
    "TrustStore",
    "Verdict",
    "cert_facts",
    "days_left",
    "expiry_severity",
    "find_stale_deployments",
    "hostname_matches",
    "judge",
    "parse_endpoint",
    "parse_target_lines",
    "scan_endpoint",
    "scan_endpoints",
]
