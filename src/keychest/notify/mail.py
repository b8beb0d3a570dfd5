"""A mail as the outbox hands it to the SMTP adapter (pure data; notify.smtp builds the MIME)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Composed:
    """A rendered mail, held in memory only: it may carry raw link tokens."""

    subject: str
    text: str
    html: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Outgoing:
    """One leased outbox row, rendered and ready for SMTP."""

    id: int
    kind: str
    to_addr: str
    created_at: datetime
    attempts: int
    mail: Composed
