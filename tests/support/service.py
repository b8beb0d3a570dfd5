"""An in-process Keychest on a fresh database with a clock the test sets (service-level tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from keychest.config import Settings
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade


class ManualClock:
    """Time stands still until the test moves it (`clock.now = ...`)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@contextmanager
def service_at(db_url: str, now: datetime) -> Iterator[Keychest]:
    """Migrated database, default settings (mail domain keychest.test), clock at `now`."""
    db = Database(db_url)
    upgrade(db)
    try:
        yield Keychest(
            db, Settings(db_url=db_url, data_dir=Path("."), mail_domain="keychest.test"), ManualClock(now)
        )
    finally:
        db.dispose()
