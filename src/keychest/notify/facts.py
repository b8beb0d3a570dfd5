"""Plain data the alert and report decisions read: what the scanner last saw, per endpoint.

Built from the database by service.alerting; built by hand in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class CertInfo:
    id: int
    sha256: str
    issuer: str  # the short issuer name (organisation): what a person recognises
    not_before: datetime
    not_after: datetime
    is_lets_encrypt: bool = False
    subject: str = ""  # the full subject DN, for the webhook payload

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    def left(self, now: datetime) -> timedelta:
        return self.not_after - now


@dataclass(frozen=True)
class AddressFacts:
    ip: str  # "" when the name did not resolve
    state: str  # ok, warning, critical, error
    certificate: CertInfo | None = None
    error_kind: str | None = None
    error: str | None = None
    # When the current run of errors on this address began (None when it is not failing).
    error_since: datetime | None = None
    problems: tuple[str, ...] = ()  # problem codes from the judge, e.g. stale_deployment


@dataclass(frozen=True)
class EndpointFacts:
    id: int
    name: str  # host[:port] as users registered it
    addresses: tuple[AddressFacts, ...]
    # The registrable domain (example.net for www.example.net) and its registration expiry by
    # RDAP, for the domain_expires_soon / domain_expired alerts; None: unknown.
    registered_domain: str | None = None
    registration_expires: datetime | None = None

    @property
    def certificates(self) -> list[CertInfo]:
        seen: dict[int, CertInfo] = {}
        for address in self.addresses:
            if address.certificate is not None:
                seen.setdefault(address.certificate.id, address.certificate)
        return list(seen.values())


@dataclass(frozen=True)
class CertChange:
    """A new certificate on an address (scan_changes.new_certificate), with both certificates."""

    id: int
    endpoint_id: int
    endpoint: str
    ip: str
    at: datetime
    old: CertInfo | None
    new: CertInfo


def days(delta: timedelta) -> float:
    return delta.total_seconds() / 86400


def describe_left(delta: timedelta) -> str:
    """ "4 days", "1 day", "7 hours": how much time is left, in the unit people think in.

    Whole days are the documented ``days_left`` (rounded down, as the scanner, the dashboard
    and the line API count): 4 days 23 hours is "4 days" in every view and mail.
    """
    seconds = delta.total_seconds()
    if seconds >= 2 * 86400:
        return f"{int(seconds // 86400)} days"
    if seconds >= 86400:
        return "1 day"
    hours = max(int(seconds // 3600), 0)
    return f"{hours} hour{'s' if hours != 1 else ''}"
