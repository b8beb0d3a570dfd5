"""The alert-channel side's loops, beside the mail loops (roles all and mailer): the channel
pass (service.incidents) and the notifier, which delivers the outbox's notification rows.

Each channel is delivered by its own task, one batch at a time: a receiver that hangs holds
its own task for at most the delivery time-out, and the next lease simply leaves that channel
out (``busy``) while every other channel carries on. A 5xx or time-out pauses the channel in
the database (service.outbox), so its queue is not even looked at until the pause ends.

Crash semantics are the mail sender's, per batch: ``sending`` (with a lease) is committed
before the first request, ``sent`` once for a channel's batch (at most ``per_channel`` rows)
right after its last 2xx; a process dying in between delivers those notifications again when
the lease ends, with the same ``webhook-id`` for the receiver to deduplicate. Nothing is lost.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

import httpx

from keychest.notify import deliver
from keychest.servers.activity import run_on_activity
from keychest.service import incidents, outbox
from keychest.service.context import Ctx
from keychest.service.facade import Keychest

log = logging.getLogger("keychest.notifier")
T = TypeVar("T")
P = ParamSpec("P")

PASS_INTERVAL_S = 60.0
ACTIVITY_POLL_S = 2.0


def body_of(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class Notifier:
    def __init__(
        self,
        service: Keychest,
        *,
        per_channel: int = 20,
        idle_poll_s: float = 0.5,
    ) -> None:
        self.service = service
        self.settings = service.settings.notify
        self.per_channel = per_channel
        # Longer than a whole batch can take, each delivery bounded by the time-out.
        self.lease_s = self.settings.timeout_s * per_channel + 60.0
        self.idle_poll_s = idle_poll_s
        self._db = ThreadPoolExecutor(1, thread_name_prefix="keychest-notify-db")
        self._busy: dict[int, asyncio.Task[None]] = {}
        self._http: httpx.AsyncClient | None = None
        self.sent = 0
        self.failed = 0

    async def _db_call(self, fn: Callable[Concatenate[Ctx, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(self.service.call, fn, *args, **kwargs))

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = deliver.client()
        return self._http

    async def _close(self) -> None:
        for task in self._busy.values():
            task.cancel()
        await asyncio.gather(*self._busy.values(), return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _deliver(self, channel_id: int, batch: list[outbox.Notification]) -> None:
        allow_private = self.service.settings.scan.allow_private_targets
        delivered: list[int] = []
        try:
            await self._deliver_batch(channel_id, batch, allow_private, delivered)
        finally:
            if delivered:
                await self._db_call(outbox.notifications_sent, delivered, channel_id)
                self.sent += len(delivered)

    async def _deliver_batch(
        self, channel_id: int, batch: list[outbox.Notification], allow_private: bool, delivered: list[int]
    ) -> None:
        for index, item in enumerate(batch):
            payload = item.payload
            outcome = await deliver.send(
                item.target,
                body=body_of(payload),
                title=str(payload.get("title", "keychest")),
                message=f"{payload.get('message', '')}\n{payload.get('dashboard_url', '')}".strip(),
                msg_id=str(payload.get("id", item.id)),
                timestamp=int(time.time()),
                timeout_s=self.settings.timeout_s,
                allow_private_targets=allow_private,
                http=self._client(),
            )
            if outcome.ok:
                delivered.append(item.id)
                continue
            self.failed += 1
            log.warning("notification %d to channel %d failed: %s", item.id, channel_id, outcome.answer)
            if delivered:
                # Committed first: the failure then leaves the channel failing or paused.
                await self._db_call(outbox.notifications_sent, list(delivered), channel_id)
                self.sent += len(delivered)
                delivered.clear()
            await self._db_call(
                outbox.notification_failed,
                item.id,
                channel_id,
                outcome.answer,
                refused=outcome.refused,
                base_s=self.settings.retry_base_s,
            )
            if not outcome.refused:
                # The channel is paused now: the rest of its batch waits with it.
                await self._db_call(outbox.release, [n.id for n in batch[index + 1 :]])
                return

    async def run_once(self) -> int:
        """Lease for every idle channel and start delivering; the number of rows leased."""
        self._busy = {c: t for c, t in self._busy.items() if not t.done()}
        leased = await self._db_call(
            outbox.lease_notifications,
            per_channel=self.per_channel,
            lease_s=self.lease_s,
            busy=frozenset(self._busy),
        )
        by_channel: dict[int, list[outbox.Notification]] = {}
        for item in leased:
            by_channel.setdefault(item.channel_id, []).append(item)
        for channel_id, batch in by_channel.items():
            self._busy[channel_id] = asyncio.create_task(
                self._deliver(channel_id, batch), name=f"notify-channel-{channel_id}"
            )
        return len(leased)

    async def run(self) -> None:
        try:
            while True:
                try:
                    leased = await self.run_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("notifier pass failed")
                    leased = 0
                busy = [t for t in self._busy.values() if not t.done()]
                if busy:
                    # A channel that finishes its batch is leased for again at once; the others
                    # are looked at every idle_poll_s, not on every turn of this loop.
                    await asyncio.wait(busy, timeout=self.idle_poll_s, return_when=asyncio.FIRST_COMPLETED)
                elif leased == 0:
                    await asyncio.sleep(self.idle_poll_s)
        finally:
            await self._close()
            self._db.shutdown(wait=False, cancel_futures=True)

    async def drain(self, *, idle_rounds: int = 3) -> None:
        """Deliver until nothing is due and no channel is busy (tests, benchmarks)."""
        quiet = 0
        try:
            while quiet < idle_rounds:
                leased = await self.run_once()
                busy = [t for t in self._busy.values() if not t.done()]
                if busy:
                    await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
                quiet = quiet + 1 if leased == 0 and not busy else 0
        finally:
            await self._close()
            self._db.shutdown(wait=True)


async def run_notifier(service: Keychest) -> None:
    await Notifier(service).run()


def _report_channels(result: incidents.PassResult) -> None:
    if result.queued:
        log.info("channel pass: %d notifications for %d channels", result.queued, result.channels)


async def run_channel_pass(service: Keychest) -> None:
    await run_on_activity(
        service,
        incidents.run_pass,
        _report_channels,
        log=log,
        what="channel pass",
        interval_s=PASS_INTERVAL_S,
        poll_s=ACTIVITY_POLL_S,
    )


NOTIFY_PARTS: list[Callable[[Keychest], Awaitable[None]]] = [run_notifier, run_channel_pass]
