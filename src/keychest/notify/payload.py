"""The webhook payload (version 1): an event as JSON-ready data, pure (no I/O, ``now`` passed in).

The contract is docs/notify-payload.schema.json; tests validate real payloads against it.
A field is added in a new version only when a receiver written for the old one still works.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keychest.notify.events import TEST, Event
from keychest.scan.judge import days_left

VERSION = 1


@dataclass(frozen=True)
class AccountRef:
    id: int
    email: str


def _iso(at: datetime) -> str:
    return at.replace(microsecond=0).isoformat() + "Z"


def build(
    event: Event,
    *,
    msg_id: str,
    occurred_at: datetime,
    now: datetime,
    host: str,
    port: int,
    account: AccountRef | None,
    dashboard_url: str,
    ack_url: str | None,
) -> dict[str, Any]:
    """One event as the JSON a webhook receiver gets (and Apprise's json:// sends as message)."""
    cert = event.certificate
    return {
        "version": VERSION,
        "id": msg_id,
        "type": event.type,
        "occurred_at": _iso(occurred_at),
        "severity": event.severity,
        "title": event.title,
        "message": event.message,
        "account": None if account is None else {"id": account.id, "email": account.email},
        "endpoint": {"host": host, "port": port, "ip": event.ip},
        "certificate": None
        if cert is None
        else {
            "sha256": cert.sha256,
            "subject": cert.subject,
            "issuer": cert.issuer,
            "not_after": _iso(cert.not_after),
            "days_left": days_left(cert.not_after, now),
        },
        "problems": list(event.problems),
        "dashboard_url": dashboard_url,
        "ack_url": ack_url,
    }


def test_event(now: datetime) -> Event:
    """What `keychest notify test` and a channel's "send a test" deliver."""
    return Event(
        f"test:{now.isoformat()}",
        TEST,
        "info",
        None,
        "keychest.test",
        None,
        None,
        "keychest test notification",
        "This is a test from keychest: the channel works.",
    )
