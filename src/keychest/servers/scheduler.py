"""The scan loop inside `keychest serve`: lease what is due, scan it, store the results.

Leases make it safe to run several of these against one PostgreSQL (see service.scans).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from keychest.config import SchedulerSettings
from keychest.scan.model import ScanOptions
from keychest.scan.runner import Scanner
from keychest.scan.targets import Endpoint
from keychest.service import liveness, scans
from keychest.service.context import Ctx
from keychest.service.facade import Keychest

log = logging.getLogger("keychest.scheduler")

T = TypeVar("T")
P = ParamSpec("P")


def owner_id() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def settings_fingerprint(options: ScanOptions) -> str:
    """SHA-256 over the settings that decide a `blocked` or an untrusted result.

    The CA file by its content, not its name: a private CA added to the same file counts.
    """
    try:
        ca = hashlib.sha256(Path(options.ca_file).read_bytes()).hexdigest() if options.ca_file else ""
    except OSError as exc:  # the scanner reports an unreadable file its own way
        ca = f"unreadable:{exc.strerror}"
    facts = {
        "allow_private_targets": options.allow_private_targets,
        "system_trust": options.system_trust,
        "ca_file": ca,
        "resolver": options.resolver,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


class ScanScheduler:
    def __init__(self, service: Keychest, settings: SchedulerSettings, options: ScanOptions) -> None:
        self.service = service
        self.settings = settings
        self.options = options
        self.owner = owner_id()
        # Leases and results go through one thread: SQLite has one writer anyway.
        self._db = ThreadPoolExecutor(1, thread_name_prefix="keychest-scan-db")
        self.counts: Counter[str] = Counter()
        self._last_progress = time.monotonic()
        self.on_recorded: list = []  # callbacks (endpoint, results) for metrics

    @property
    def lease_s(self) -> float:
        if self.settings.lease_s is not None:
            return self.settings.lease_s
        # Long enough for a scan of every address with all its time-outs, with room to spare.
        return self.options.timeout * 4 + 60

    async def _db_call(self, fn: Callable[Concatenate[Ctx, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(self.service.call, fn, *args, **kwargs))

    async def run(self) -> None:
        scanner = self.make_scanner()
        in_flight: dict[asyncio.Task[None], int] = {}  # task -> endpoint id it holds a lease on
        log.info(
            "scanner %s: every %gs, up to %d endpoints at once",
            self.owner,
            self.settings.interval_s,
            self.settings.max_in_flight,
        )
        await self._rescan_if_settings_changed()
        try:
            while True:
                # Endpoints parked behind a busy address (a tarpit) do not count: see scan.runner.
                room = scanner.room(len(in_flight), self.settings.max_in_flight)
                due = []
                if room > 0:
                    try:
                        due = await self._db_call(
                            scans.lease_due, owner=self.owner, limit=room, lease_s=self.lease_s
                        )
                    except Exception as exc:
                        # The database restarted or the network dropped: the pool reconnects on
                        # the next checkout (pre-ping). Dying here would take a whole `--role all`
                        # process down with it, so wait and lease again.
                        self.counts["lease_failed"] += 1
                        log.warning("leasing failed (%r); retrying in %gs", exc, self.settings.db_retry_s)
                        await asyncio.sleep(self.settings.db_retry_s)
                        continue
                liveness.mark("scanner")  # a lease round that reached the database (/healthz)
                held = set(in_flight.values())
                for item in due:
                    if item.id in held:
                        continue  # its lease ran out while it waited for its address; now renewed
                    task = asyncio.create_task(self._scan_one(scanner, item))
                    in_flight[task] = item.id
                    task.add_done_callback(lambda done: in_flight.pop(done, None))
                self._progress(len(in_flight))
                if not due or room <= 0:
                    waiters: list[asyncio.Future[None]] = list(in_flight)
                    if waiters:
                        # When full, a scan that parks frees a slot as surely as one that ends.
                        change = asyncio.ensure_future(scanner.wait_for_change())
                        if room <= 0:
                            waiters.append(change)
                        await asyncio.wait(
                            waiters, timeout=self.settings.idle_poll_s, return_when=asyncio.FIRST_COMPLETED
                        )
                        change.cancel()
                    else:
                        await asyncio.sleep(self.settings.idle_poll_s)
        finally:
            unfinished = list(in_flight.values())
            for task in list(in_flight):
                task.cancel()
            self._db.shutdown(wait=False, cancel_futures=True)
            self._release_leases(unfinished)

    async def _rescan_if_settings_changed(self) -> None:
        """Results judged under other settings (blocked, untrusted) are scanned again first."""
        try:
            marked = await self._db_call(
                scans.rescan_after_settings_change, settings_fingerprint(self.options)
            )
        except Exception as exc:  # the database is down: the loop below waits for it anyway
            log.warning("could not compare the scan settings with the last run's: %r", exc)
            return
        if marked:
            log.info("scan settings changed: %d blocked or untrusted endpoints are scanned again now", marked)

    def make_scanner(self) -> Scanner:
        """The scanner this loop uses; a subclass may return another (bench/scale.py does)."""
        return Scanner(self.options)

    def _release_leases(self, endpoint_ids: list[int]) -> None:
        """On a clean stop, hand back what this process leased and did not finish.

        Without this an endpoint waits for its lease to run out (minutes) before another
        scanner takes it; after a crash (kill -9) that wait is the only way, and suffices.
        """
        try:
            released = self.service.call(scans.release_leases, self.owner, endpoint_ids)
        except Exception as exc:
            log.warning("could not release leases of %s: %r (they run out on their own)", self.owner, exc)
            return
        if released:
            log.info("released %d unfinished leases", released)

    async def _scan_one(self, scanner: Scanner, item: scans.DueEndpoint) -> None:
        try:
            results = await scanner.scan_endpoint(Endpoint(item.host, item.port, item.protocol))
            recorded = await self._db_call(
                scans.record,
                item.id,
                results,
                interval_s=self.settings.interval_s,
                jitter=random.uniform(-self.settings.jitter, self.settings.jitter),
                owner=self.owner,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease runs out and the endpoint comes due again: nothing is lost.
            log.exception("scan of %s:%d failed", item.host, item.port)
            self.counts["failed"] += 1
            return
        self.counts["scanned"] += 1
        self.counts[recorded.state] += 1
        for change in recorded.changes:
            self.counts[f"change:{change}"] += 1
        for callback in self.on_recorded:
            callback(item, results)

    def _progress(self, in_flight: int) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.settings.progress_every_s:
            return
        self._last_progress = now
        if self.counts or in_flight:
            summary = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
            log.info("scanner progress: in flight %d; since start %s", in_flight, summary or "nothing")
