"""The line API's one formatter for expiration facts: key=value words in a fixed order, absent
facts left out, booleans as yes/no, times as ISO 8601 UTC (docs/protocol.md)."""

from __future__ import annotations

from datetime import datetime

from keychest.servers.dispatch import _expiration
from keychest.service.scans import PENDING, ExpirationFacts


def test_not_scanned_yet() -> None:
    answer = _expiration(ExpirationFacts(PENDING, 0))
    assert (answer.code, answer.text, answer.data) == (200, "not scanned yet", "state=pending addresses=0")


def test_every_fact_in_order() -> None:
    facts = ExpirationFacts(
        "warning",
        2,
        not_after=datetime(2027, 1, 2, 3, 4, 5),
        days_left=31,
        sha256="ab" * 32,
        certificates=1,
        lets_encrypt=True,
        trusted=True,
        hostname_ok=False,
        errors=("blocked", "timeout"),
        allow_with="--allow-private-targets",
        last_scan=datetime(2026, 12, 1, 12, 0),
    )
    answer = _expiration(facts)
    assert answer.text == "scanned"
    assert answer.data == (
        "state=warning addresses=2 not_after=2027-01-02T03:04:05Z days_left=31 "
        f"sha256={'ab' * 32} certificates=1 lets_encrypt=yes trusted=yes hostname_ok=no "
        "errors=blocked,timeout allow_with=--allow-private-targets last_scan=2026-12-01T12:00:00Z"
    )


def test_a_failed_scan_says_only_what_it_knows() -> None:
    facts = ExpirationFacts("error", 0, errors=("dns",), last_scan=datetime(2026, 12, 1, 12, 0))
    assert _expiration(facts).data == "state=error addresses=0 errors=dns last_scan=2026-12-01T12:00:00Z"
