"""The mail side's background loops, run by `keychest serve` (roles all and mailer): the outbox
sender, the alert pass and the weekly scheduler.

Crash semantics of the sender (docs/mail.md): a mail is marked ``sending`` with a lease in one
committed transaction before the SMTP transaction starts, and ``sent`` in a transaction
committed right after the server's final 250. A process that dies between those two commits
leaves the row ``sending``; when the lease ends it is sent again (same Message-ID). That
window, a few milliseconds per mail, is the only way a mail goes out twice; no mail is ever lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

from keychest.notify import smtp
from keychest.servers.activity import run_on_activity
from keychest.service import alerting, liveness, outbox, reports
from keychest.service.context import Ctx
from keychest.service.facade import Keychest

log = logging.getLogger("keychest.mailer")
T = TypeVar("T")
P = ParamSpec("P")

ALERT_INTERVAL_S = 60.0
# How often to look for fresh scan results or newly confirmed accounts (two cheap queries),
# so alerts follow a scan within seconds instead of within the minute.
ACTIVITY_POLL_S = 2.0
WEEKLY_INTERVAL_S = 60.0


class Sender:
    """Sends what is due, one batch at a time, over one SMTP session per batch."""

    def __init__(
        self,
        service: Keychest,
        *,
        batch: int = 20,
        lease_s: float = 300.0,
        retry_base_s: float = 30.0,
        idle_poll_s: float = 1.0,
    ) -> None:
        self.service = service
        self.batch = batch
        # Longer than one SMTP transaction can take (aiosmtplib time-out 60 s per command).
        self.lease_s = lease_s
        self.retry_base_s = retry_base_s
        self.idle_poll_s = idle_poll_s
        self._db = ThreadPoolExecutor(1, thread_name_prefix="keychest-mail-db")
        self.sent = 0
        self.failed = 0

    async def _db_call(self, fn: Callable[Concatenate[Ctx, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(self.service.call, fn, *args, **kwargs))

    async def run_once(self) -> int:
        """Lease and try one batch; the number of queued mails it dealt with (sent, failed or skipped)."""
        settings = self.service.settings.mail
        if settings.smtp_host is None:
            return 0
        batch = await self._db_call(outbox.lease, limit=self.batch, lease_s=self.lease_s)
        if not batch:
            return batch.examined
        connection = smtp.Connection(settings)
        try:
            for outgoing in batch:
                message = smtp.build_message(settings, outgoing, self.service.clock())
                try:
                    await connection.send(message)
                except smtp.SendError as exc:
                    self.failed += 1
                    log.warning("mail %d (%s) not sent, will retry: %s", outgoing.id, outgoing.kind, exc.text)
                    await self._db_call(
                        outbox.mark_failed,
                        outgoing.id,
                        exc.text,
                        refused=exc.refused,
                        base_s=self.retry_base_s,
                    )
                    continue
                # Commit "sent" at once: this gap is the whole at-least-once window.
                await self._db_call(outbox.mark_sent, outgoing.id)
                self.sent += 1
                log.info("mail %d (%s) sent to %s", outgoing.id, outgoing.kind, outgoing.to_addr)
        finally:
            await connection.close()
        return batch.examined

    async def run(self) -> None:
        if self.service.settings.mail.smtp_host is None:
            log.warning("no --smtp server: mails stay queued in the outbox")
        try:
            while True:
                try:
                    tried = await self.run_once()
                    liveness.mark("mailer")  # a pass that reached the database (/healthz)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The database is away, say: leases expire, nothing is lost; try again soon.
                    log.exception("mail sender pass failed")
                    tried = 0
                if tried < self.batch:
                    await asyncio.sleep(self.idle_poll_s)
        finally:
            self._db.shutdown(wait=False, cancel_futures=True)

    async def drain(self, *, max_batches: int = 1000) -> None:
        """Send everything due now (the `report weekly` command), then return."""
        try:
            for _ in range(max_batches):
                if await self.run_once() == 0:
                    return
        finally:
            self._db.shutdown(wait=True)


async def run_outbox(service: Keychest) -> None:
    await Sender(service).run()


def _report_alerts(result: alerting.PassResult) -> None:
    if result.mails:
        log.info("alert pass: %d alerts in %d mails", result.alerts, result.mails)


async def run_alerts(service: Keychest) -> None:
    await run_on_activity(
        service,
        alerting.run_pass,
        _report_alerts,
        log=log,
        what="alert pass",
        interval_s=ALERT_INTERVAL_S,
        poll_s=ACTIVITY_POLL_S,
    )


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
