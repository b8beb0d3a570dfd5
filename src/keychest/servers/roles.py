"""`keychest serve`: start the parts of one process and stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import resource
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import uvicorn

from keychest import __version__
from keychest.config import Settings
from keychest.servers.dispatch import Dispatcher
from keychest.servers.http import bind, http_server
from keychest.servers.line import LineServer, WriteBatcher
from keychest.servers.mailer import MAILER_PARTS
from keychest.servers.notifier import NOTIFY_PARTS
from keychest.servers.scheduler import ScanScheduler
from keychest.service import heartbeats, liveness, retention
from keychest.service.errors import StorageUnavailable
from keychest.service.facade import Keychest
from keychest.service.heartbeats import ProcessInfo
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


HEARTBEAT_S = 10.0
# Back-off between attempts to reach the database at start: 1, 2, 4, ... seconds, at most this.
DB_RETRY_MAX_S = 30.0


async def run_heartbeat(service: Keychest) -> None:
    """Every HEARTBEAT_S, this process's row in heartbeats: any node's /metrics shows it alive."""
    process = ProcessInfo(service.settings.role, socket.gethostname(), os.getpid(), __version__)
    failing = False
    while True:
        try:
            await asyncio.to_thread(service.call, heartbeats.beat, process, liveness.oldest())
            failing = False
        except Exception as exc:  # the database is away: the loops say so themselves
            if not failing:
                log.warning("heartbeat not written: %s", exc)
            failing = True
        await asyncio.sleep(HEARTBEAT_S)


RETENTION_EVERY_S = 3600.0


async def run_retention(service: Keychest) -> None:
    """Every hour: rows older than --retention go (service/retention.py), a batch at a time."""
    keep_s = service.settings.retention_s
    while True:
        try:
            total = retention.Pruned(0, 0, 0, 0)
            while True:
                pruned = await asyncio.to_thread(service.call, retention.prune, keep_s=keep_s)
                total += pruned
                if pruned.total == 0:
                    break
            if total.total:
                log.info(
                    "retention: deleted %d audit, %d scan history, %d token and %d outbox rows",
                    total.audit,
                    total.history,
                    total.tokens,
                    total.outbox,
                )
        except Exception as exc:  # the database is away: next hour
            log.warning("retention pass failed: %s", exc)
        await asyncio.sleep(RETENTION_EVERY_S)


async def run_checkpointer(service: Keychest) -> None:
    """SQLite only: fold the WAL back into the database off the request path, every second."""
    while True:
        await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(service.checkpoint)
        except Exception as exc:  # busy or locked: the next round catches up
            log.debug("checkpoint skipped: %s", exc)


def _start(part: Part, service: Keychest) -> asyncio.Task[None]:
    async def run() -> None:
        await part(service)

    return asyncio.create_task(run(), name=getattr(part, "__name__", "part"))


def mailer_parts() -> list[Part]:
    """The mail side: outbox sender, alerts, weekly reports; the alert channels beside it."""
    return list(MAILER_PARTS) + list(NOTIFY_PARTS)


def parts_for(role: str) -> list[Part]:
    """The background parts each role runs besides (or instead of) the API servers."""
    # Retention runs where background work runs (never on an API node); any number of
    # processes may prune at once.
    scanner: list[Part] = [run_scanner, run_retention]
    if role == "all":
        return scanner + mailer_parts()
    return {"scanner": scanner, "mailer": [*mailer_parts(), run_retention]}.get(role, [])


class StartupError(Exception):
    """The process cannot start; the message is the one line to show (no traceback)."""


def _listen_failure(host: str, port: int, flag: str, exc: OSError) -> StartupError:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "the address is already in use (another keychest, or another program?)"
    return StartupError(f"cannot listen on {where} ({flag}): {reason}")


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load --tls-cert {cert} / --tls-key {key}: {exc}") from None
    return context


@dataclass
class Process:
    settings: Settings
    extra_parts: list[Part] = field(default_factory=list)

    async def run(self) -> None:
        service = await self._open()
        try:
            if service.is_sqlite:
                self.extra_parts.append(run_checkpointer)
            self.extra_parts.append(run_heartbeat)
            if self.settings.role not in ("all", "api"):
                await self._run_background(service, parts_for(self.settings.role) + self.extra_parts)
            else:
                await self._run_api(service)
        finally:
            service.close()

    async def _open(self) -> Keychest:
        """The service, waiting with back-off while PostgreSQL is not up yet (one line per try)."""
        delay = 1.0
        waited = 0.0
        attempt = 1
        while True:
            try:
                return await asyncio.to_thread(Keychest.open, self.settings)
            except StorageUnavailable as exc:
                if not exc.retry or waited >= self.settings.db_start_timeout_s:
                    raise StartupError(exc.text) from None
                log.warning("%s; attempt %d, retrying in %.0f s", exc.text, attempt, delay)
            await asyncio.sleep(delay)
            waited += delay
            attempt += 1
            delay = min(delay * 2, DB_RETRY_MAX_S)

    async def _run_api(self, service: Keychest) -> None:
        settings = self.settings
        batcher = WriteBatcher(service)
        batcher.start()
        dispatcher = Dispatcher(service, batcher.submit)
        lines = [LineServer(settings.line, dispatcher, metrics.observe_line)]
        if settings.line.tls_listen is not None:
            assert settings.line.tls_cert is not None and settings.line.tls_key is not None
            host, port = settings.line.tls_listen
            lines.append(
                LineServer(
                    settings.line,
                    dispatcher,
                    metrics.observe_line,
                    admission=lines[0].admission,
                    tls=_tls_context(settings.line.tls_cert, settings.line.tls_key),
                    host=host,
                    port=port,
                )
            )
        http: uvicorn.Server | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            # Every listener is bound before anything is announced: a port in use is one
            # clear line and a non-zero exit, never a half-started server. The plain line API
            # opens last, so whoever waits for its port finds every other listener ready
            # (the HTTP socket queues connections until uvicorn serves it).
            try:
                sock = bind(settings.http_host, settings.http_port)
            except OSError as exc:
                raise _listen_failure(settings.http_host, settings.http_port, "--http-listen", exc) from None
            http = http_server(create_app(service), settings)
            tasks.append(asyncio.create_task(http.serve(sockets=[sock]), name="http"))
            while not http.started:
                if tasks[0].done():
                    raise StartupError(f"the HTTP server did not start: {tasks[0].exception()!r}")
                await asyncio.sleep(0.01)
            for line, flag in reversed(
                list(zip(lines, ("--line-listen", "--line-tls-listen"), strict=False))
            ):
                try:
                    await line.start()
                except OSError as exc:
                    raise _listen_failure(line.host, line.port, flag, exc) from None
            await self._serve(service, lines, http, tasks)
        finally:
            for line in lines:
                await line.stop()
            if http is not None:
                http.should_exit = True
            for task in tasks:
                if task.get_name() != "http":
                    task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            await batcher.stop()

    async def _serve(
        self,
        service: Keychest,
        lines: list[LineServer],
        http: uvicorn.Server,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        settings = self.settings
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        background = (parts_for(settings.role) if settings.role == "all" else []) + self.extra_parts
        tasks += [_start(part, service) for part in background]
        # Everything loaded so far lives as long as the process: keep the collector off it, or
        # its full passes over SQLAlchemy's and FastAPI's objects show up as latency spikes.
        gc.collect()
        gc.freeze()
        http_host = f"[{settings.http_host}]" if ":" in settings.http_host else settings.http_host
        listening = [f"line API on {', '.join(lines[0].addresses)}"]
        if len(lines) > 1:
            listening.append(f"line API over TLS on {', '.join(lines[1].addresses)}")
        listening.append(
            f"dashboard and REST on http://{http_host}:{settings.http_port}/ (API docs at /docs)"
        )
        log.info("keychest serving: %s; database %s", "; ".join(listening), service.describe_database())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                log.error("%s failed: %r", task.get_name(), task.exception())
        stopper.cancel()
        log.info("stopping")

    async def _run_background(self, service: Keychest, parts: list[Part]) -> None:
        """A scanner or mailer process: no listeners, only its background work."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        settings = self.settings
        http: uvicorn.Server | None = None
        tasks: list[asyncio.Task[None]] = []
        if settings.role_http:
            # /healthz and /metrics of this scanner or mailer (--http-listen).
            try:
                sock = bind(settings.http_host, settings.http_port)
            except OSError as exc:
                raise _listen_failure(settings.http_host, settings.http_port, "--http-listen", exc) from None
            http = http_server(metrics.create_role_app(service), settings)
            tasks.append(asyncio.create_task(http.serve(sockets=[sock]), name="http"))
        tasks += [_start(part, service) for part in parts]
        where = f" (/healthz and /metrics on {settings.http_host}:{settings.http_port})" if http else ""
        log.info("keychest %s running%s", settings.role, where)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if http is not None:
            http.should_exit = True
        for task in tasks:
            if task.get_name() != "http":
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


def raise_open_files_limit() -> None:
    """Every connection is a file: take the hard limit, not the 1024 many systems start with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run_process(process: Process) -> None:
    """Run until SIGTERM/SIGINT. Raises StartupError when the process cannot start."""
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:  # uvloop is optional: the standard loop works, only slower
        asyncio.run(process.run())
    else:
        uvloop.run(process.run())
