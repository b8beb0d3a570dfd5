"""The mail side's background parts, run by `keychest serve` (roles all and mailer)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from keychest.notify.outbox import Sender
from keychest.service import alerting, reports
from keychest.service.facade import Keychest

log = logging.getLogger("keychest.mailer")

ALERT_INTERVAL_S = 60.0
# How often to look for fresh scan results or newly confirmed accounts (two cheap queries),
# so alerts follow a scan within seconds instead of within the minute.
ACTIVITY_POLL_S = 2.0
WEEKLY_INTERVAL_S = 60.0


async def run_outbox(service: Keychest) -> None:
    await Sender(service).run()


async def run_alerts(service: Keychest) -> None:
    marker: tuple[int, int] | None = None
    last_pass = 0.0
    while True:
        try:
            current = await asyncio.to_thread(service.read, alerting.activity_marker)
            if current != marker or time.monotonic() - last_pass >= ALERT_INTERVAL_S:
                result = await asyncio.to_thread(service.call, alerting.run_pass)
                marker, last_pass = current, time.monotonic()
                if result.mails:
                    log.info("alert pass: %d alerts in %d mails", result.alerts, result.mails)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("alert pass failed")
        await asyncio.sleep(ACTIVITY_POLL_S)


async def run_weekly(service: Keychest) -> None:
    while True:
        try:
            outcomes = await asyncio.to_thread(service.call, reports.weekly_pass)
            queued = [o.email for o in outcomes if o.queued]
            if queued:
                log.info("weekly reports queued for %d accounts", len(queued))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("weekly pass failed")
        await asyncio.sleep(WEEKLY_INTERVAL_S)


MAILER_PARTS: list[Callable[[Keychest], Awaitable[None]]] = [run_outbox, run_alerts, run_weekly]
