"""The asyncio shell around keychest.protocol.line: sockets, time-outs, and group commit.

Every rule lives elsewhere: framing and parsing in ``protocol.line``, the meaning of a
request in ``servers.dispatch``, accounts and domains in ``service``. What this module adds
is what only a server can: reading with time-outs, one write per response, a cap on
connections, and a writer task that commits many requests at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from keychest.config import LineServerSettings
from keychest.protocol.line import LineError, LineFramer, Response, format_response, parse_request
from keychest.servers.dispatch import Dispatcher
from keychest.service.facade import Call, Keychest

log = logging.getLogger("keychest.line")

READ_CHUNK = 4096
# Many requests under one commit; bounded so one batch cannot hold the writer for long.
MAX_BATCH = 512


@dataclass
class WriteBatcher:
    """Queues writes and runs them in batches on one thread: one commit, one fsync, per batch."""

    service: Keychest
    _queue: asyncio.Queue[tuple[Call, asyncio.Future[object]]] = field(default_factory=asyncio.Queue)
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="keychest-writer")
    )
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="line-writer")

    async def submit(self, call: Call) -> object:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        await self._queue.put((call, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            while len(items) < MAX_BATCH and not self._queue.empty():
                items.append(self._queue.get_nowait())
            calls = [call for call, _ in items]
            try:
                results = await loop.run_in_executor(self._executor, self.service.call_batch, calls)
            except Exception as exc:  # the database failed: nothing in this batch committed
                log.exception("write batch of %d failed", len(items))
                results = [exc] * len(items)
            for (_, future), result in zip(items, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)


@dataclass
class LineServer:
    settings: LineServerSettings
    dispatcher: Dispatcher
    on_response: Callable[[str, int], None] | None = None
    connections: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.settings.host, self.settings.port, backlog=4096, limit=READ_CHUNK * 4
        )
        names = ", ".join(str(s.getsockname()[:2]) for s in self._server.sockets)
        log.info("line API listening on %s", names)

    @property
    def ports(self) -> list[int]:
        assert self._server is not None
        return [s.getsockname()[1] for s in self._server.sockets]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            if self.connections > self.settings.max_connections:
                await self._send(writer, "overload", Response(503, "too many connections; retry later"))
                return
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        except Exception:
            log.exception("line connection failed")
        finally:
            self.connections -= 1
            self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = peer[0] if peer else None
        framer = LineFramer()
        answered = 0
        settings = self.settings
        while answered < settings.max_requests_per_connection:
            # A partial line waits only a short pause for the rest (the `echo -ne` case).
            wait = settings.partial_line_pause_s if framer.has_pending else settings.idle_timeout_s
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), wait)
            except TimeoutError:
                if not framer.has_pending:
                    return  # idle: a half-open or forgotten client
                data = None
            if data is None or data == b"":
                lines = [framer.take_pending()] if framer.has_pending else []
            else:
                lines = framer.feed(data)
            for line in lines:
                if await self._answer(writer, line, ip):
                    answered += 1
            if framer.overflowed:
                await self._send(writer, "-", LineError(413, "line too long").response())
                return
            if data == b"":
                return

    async def _answer(self, writer: asyncio.StreamWriter, line: bytes, ip: str | None) -> bool:
        try:
            request = parse_request(line)
        except LineError as exc:
            await self._send(writer, "invalid", exc.response())
            return True
        if request is None:
            return False
        response = await self.dispatcher.handle(request, ip)
        await self._send(writer, request.command, response)
        return True

    async def _send(self, writer: asyncio.StreamWriter, command: str, response: Response) -> None:
        writer.write(format_response(response))  # one write per response (PROTOCOL.md)
        await writer.drain()
        if self.on_response is not None:
            self.on_response(command, response.code)
