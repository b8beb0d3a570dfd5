"""`keychest serve`: start the parts of one process and stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import uvicorn

from keychest.config import Settings
from keychest.servers.dispatch import Dispatcher
from keychest.servers.line import LineServer, WriteBatcher
from keychest.servers.mailer import MAILER_PARTS
from keychest.servers.scheduler import ScanScheduler
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from keychest.web import metrics
from keychest.web.app import create_app

log = logging.getLogger("keychest.serve")

# A part of the process that runs until cancelled (scanner, mailer, ...); each gets the service.
Part = Callable[[Keychest], Awaitable[None]]


ROLES = ("all", "api", "scanner", "mailer")


async def run_scanner(service: Keychest) -> None:
    settings = service.settings
    scheduler = ScanScheduler(service, settings.scheduler, settings.scan)
    scheduler.on_recorded.append(metrics.observe_scan)
    await scheduler.run()


async def run_checkpointer(service: Keychest) -> None:
    """SQLite only: fold the WAL back into the database off the request path, every second."""
    while True:
        await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(service.db.checkpoint)
        except Exception as exc:  # busy or locked: the next round catches up
            log.debug("checkpoint skipped: %s", exc)


def mailer_parts() -> list[Part]:
    """The mail side: outbox sender, alerts, weekly reports."""
    return list(MAILER_PARTS)


def parts_for(role: str) -> list[Part]:
    """The background parts each role runs besides (or instead of) the API servers."""
    scanner: list[Part] = [run_scanner]
    if role == "all":
        return scanner + mailer_parts()
    return {"scanner": scanner, "mailer": mailer_parts()}.get(role, [])


@dataclass
class Process:
    settings: Settings
    extra_parts: list[Part] = field(default_factory=list)

    async def run(self) -> None:
        db = Database(self.settings.db_url, sqlite_autocheckpoint=False)
        upgrade(db)
        service = Keychest(db, self.settings)
        if db.is_sqlite:
            self.extra_parts.append(run_checkpointer)
        if self.settings.role not in ("all", "api"):
            await self._run_background(service, parts_for(self.settings.role) + self.extra_parts)
            db.dispose()
            return
        batcher = WriteBatcher(service)
        batcher.start()
        dispatcher = Dispatcher(service, batcher.submit)
        line = LineServer(self.settings.line, dispatcher)
        line.on_response = metrics.observe_line
        await line.start()
        app = create_app(service)
        http = uvicorn.Server(
            uvicorn.Config(
                app,
                host=self.settings.http_host,
                port=self.settings.http_port,
                log_level="warning",
                lifespan="off",
            )
        )
        http.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(http.serve(), name="http")]
        background = (parts_for(self.settings.role) if self.settings.role == "all" else []) + self.extra_parts
        tasks += [
            asyncio.create_task(part(service), name=getattr(part, "__name__", "part")) for part in background
        ]
        # Everything loaded so far lives as long as the process: keep the collector off it, or
        # its full passes over SQLAlchemy's and FastAPI's objects show up as latency spikes.
        gc.collect()
        gc.freeze()
        log.info("keychest serving; database %s", db.engine.url.render_as_string(hide_password=True))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("%s failed: %r", task.get_name(), task.exception())
        log.info("stopping")
        await line.stop()
        http.should_exit = True
        for task in tasks:
            if task.get_name() != "http":
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await batcher.stop()
        db.dispose()

    async def _run_background(self, service: Keychest, parts: list[Part]) -> None:
        """A scanner or mailer process: no listeners, only its background work."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(part(service), name=getattr(part, "__name__", "part")) for part in parts]
        log.info("keychest %s running", self.settings.role)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run_process(process: Process) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional: the standard loop works, only slower
        asyncio.run(process.run())
    else:
        uvloop.run(process.run())
