"""What every service function works in: one open transaction, the settings, the time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from keychest.config import Settings


@dataclass(frozen=True)
class Ctx:
    session: Session
    settings: Settings
    now: datetime
    ip: str | None = None
    # Due times and leases read the database's clock (scans.database_now) unless a test
    # drives the service with a clock of its own.
    database_clock: bool = False
