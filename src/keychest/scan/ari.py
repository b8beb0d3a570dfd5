"""ACME Renewal Information (RFC 9773): the CA's own answer to "when should this be renewed?".

Pure: the certificate's ARI CertID, the built-in list of public ACME CAs that offer ARI,
parsing a renewalInfo answer and judging it. `scan.checks.AriChecker` fetches.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from cryptography import x509

from keychest.scan.judge import Problem, Severity

# Public ACME CAs that serve renewalInfo, by a word of their issuer's organisation.
PUBLIC_DIRECTORIES: tuple[tuple[str, str], ...] = (
    ("let's encrypt", "https://acme-v02.api.letsencrypt.org/directory"),
    ("google trust services", "https://dv.acme-v02.api.pki.goog/directory"),
)
# RFC 9773 section 4.3: without Retry-After, clients poll about every six hours. A server's
# Retry-After is obeyed within these bounds (0 would be a request per scan; a week would miss
# a revocation announced by moving the window).
DEFAULT_RETRY = timedelta(hours=6)
MIN_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(days=1)
DIRECTORY_TTL = timedelta(days=1)
ERROR_RETRY = timedelta(minutes=30)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def serial_der_bytes(serial: int) -> bytes:
    """The contents octets of the serial's DER INTEGER (a leading 0 byte when the top bit is set)."""
    if serial < 0:
        length = (serial.bit_length() + 8) // 8
        return serial.to_bytes(length, "big", signed=True)
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big")


def cert_id_from(key_identifier: bytes, serial: int) -> str:
    return f"{_b64url(key_identifier)}.{_b64url(serial_der_bytes(serial))}"


def cert_id(cert: x509.Certificate) -> str | None:
    """RFC 9773 section 4.1; None when the certificate has no Authority Key Identifier."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    if aki.key_identifier is None:
        return None
    return cert_id_from(aki.key_identifier, cert.serial_number)


def public_directory(issuer_organization: str | None) -> str | None:
    if not issuer_organization:
        return None
    lowered = issuer_organization.lower()
    return next((url for word, url in PUBLIC_DIRECTORIES if word in lowered), None)


@dataclass(frozen=True, slots=True)
class RenewalInfo:
    window_start: datetime
    window_end: datetime
    explanation_url: str | None
    checked_at: datetime

    def as_dict(self) -> dict[str, Any]:
        def iso(moment: datetime) -> str:
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

        return {
            "window_start": iso(self.window_start),
            "window_end": iso(self.window_end),
            "explanation_url": self.explanation_url,
            "checked_at": iso(self.checked_at),
        }


def _timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("timestamp is not a string")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {value}")
    return moment


def parse_renewal_info(body: bytes, checked_at: datetime) -> RenewalInfo:
    """Raises ValueError for anything that is not a renewalInfo object with a sane window."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("suggestedWindow"), dict):
        raise ValueError("no suggestedWindow")
    window = data["suggestedWindow"]
    start, end = _timestamp(window.get("start")), _timestamp(window.get("end"))
    if end < start:
        raise ValueError("suggestedWindow ends before it starts")
    explanation = data.get("explanationURL")
    return RenewalInfo(start, end, explanation if isinstance(explanation, str) else None, checked_at)


def retry_after(value: str | None, now: datetime) -> timedelta:
    """The server's Retry-After (seconds or an HTTP date), within MIN_RETRY..MAX_RETRY."""
    delay = DEFAULT_RETRY
    if value:
        value = value.strip()
        if value.isdigit():
            delay = timedelta(seconds=int(value))
        else:
            try:
                delay = parsedate_to_datetime(value) - now
            except (TypeError, ValueError):
                delay = DEFAULT_RETRY
    return min(max(delay, MIN_RETRY), MAX_RETRY)


class AriPhase(StrEnum):
    """Where a moment stands against the CA's suggested window (before it: no phase)."""

    DUE = "due"  # the window has started: renew now
    PASSED = "passed"  # the window has ended (or was moved into the past)


def phase(info: RenewalInfo | None, now: datetime) -> AriPhase | None:
    """The one rule behind the ``ari_renewal_due``/``ari_window_passed`` problems and the
    dashboard's "renewal due now"/"window passed"."""
    if info is None:
        return None
    if now.tzinfo is None and info.window_end.tzinfo is not None:
        now = now.replace(tzinfo=info.window_end.tzinfo)
    if now >= info.window_end:
        return AriPhase.PASSED
    if now >= info.window_start:
        return AriPhase.DUE
    return None


def ari_problems(info: RenewalInfo | None, now: datetime) -> list[Problem]:
    if info is None:
        return []
    explained = f" (the CA explains: {info.explanation_url})" if info.explanation_url else ""
    found = phase(info, now)
    if found is AriPhase.PASSED:
        return [
            Problem(
                "ari_window_passed",
                Severity.CRITICAL,
                f"the CA's renewal window ended {info.window_end:%Y-%m-%d %H:%M} UTC and this address still"
                f" serves the certificate; a window moved into the past announces a revocation{explained}",
            )
        ]
    if found is AriPhase.DUE:
        return [
            Problem(
                "ari_renewal_due",
                Severity.WARNING,
                f"the CA asks for renewal between {info.window_start:%Y-%m-%d %H:%M} and"
                f" {info.window_end:%Y-%m-%d %H:%M} UTC and this address still serves the"
                f" certificate{explained}",
            )
        ]
    return []
