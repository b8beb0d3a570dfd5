"""The CA/Browser Forum's maximum validity of a publicly trusted TLS certificate (ballot SC-081).

Pure: the issue date and the validity are read from the certificate, nothing else.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from keychest.scan.judge import CertFacts, Problem, Severity

# (issued before, maximum days): the first row whose date is after the certificate's
# notBefore applies; after the last one, LAST_MAX_DAYS.
POLICY: tuple[tuple[datetime, int], ...] = (
    (datetime(2026, 3, 15, tzinfo=UTC), 398),
    (datetime(2027, 3, 15, tzinfo=UTC), 200),
    (datetime(2029, 3, 15, tzinfo=UTC), 100),
)
LAST_MAX_DAYS = 47


def max_days(issued: datetime) -> int:
    """The longest validity allowed for a certificate issued at `issued`."""
    for before, days in POLICY:
        if issued < before:
            return days
    return LAST_MAX_DAYS


def validity(facts: CertFacts) -> timedelta:
    """RFC 5280 counts both ends: notAfter is the last valid second, hence the extra second."""
    return facts.not_after - facts.not_before + timedelta(seconds=1)


def lifetime_problem(facts: CertFacts) -> Problem | None:
    """`lifetime_over_policy` when the leaf lives longer than its issue date allows.

    The caller decides whether the certificate is publicly trusted: a private CA may issue
    whatever lifetime it likes.
    """
    allowed = max_days(facts.not_before)
    lived = validity(facts)
    if lived <= timedelta(days=allowed):
        return None
    days = lived / timedelta(days=1)
    return Problem(
        "lifetime_over_policy",
        Severity.WARNING,
        f"certificate is valid for {days:.0f} days; publicly trusted certificates issued on"
        f" {facts.not_before:%Y-%m-%d} may be valid for at most {allowed} days (CA/Browser Forum)",
    )
