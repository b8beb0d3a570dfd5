"""The loop of a pass that follows activity: the mailer's alert pass and the notifier's
channel pass both run when fresh scan results or confirmed accounts show up (a cheap marker
read every few seconds), and at least once per interval regardless (or per --renotify, when
that is shorter)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from keychest.service import alerting
from keychest.service.context import Ctx
from keychest.service.facade import Keychest

R = TypeVar("R")


async def run_on_activity(
    service: Keychest,
    run_pass: Callable[[Ctx], R],
    report: Callable[[R], None],
    *,
    log: logging.Logger,
    what: str,
    interval_s: float,
    poll_s: float,
) -> None:
    marker: tuple[int, int] | None = None
    last_pass = 0.0
    # Repeats (--renotify) fall due with no activity at all: a shorter interval is kept too.
    renotify = service.settings.notify.renotify_s
    interval_s = min(interval_s, renotify) if renotify > 0 else interval_s
    while True:
        try:
            current = await asyncio.to_thread(service.read, alerting.activity_marker)
            if current != marker or time.monotonic() - last_pass >= interval_s:
                result = await asyncio.to_thread(service.call, run_pass)
                marker, last_pass = current, time.monotonic()
                report(result)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(poll_s)
