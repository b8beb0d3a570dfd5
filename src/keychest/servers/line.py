"""The asyncio shell around keychest.protocol.line: sockets, time-outs, and group commit.

Every rule lives elsewhere: framing and parsing in ``protocol.line``, the meaning of a
request in ``servers.dispatch``, accounts and domains in ``service``. What this module adds
is what only a server can: time-outs, one write per response in request order, a cap on
connections, back-pressure, and a writer thread that commits many requests at once.

It is an ``asyncio.Protocol`` rather than streams: a bash client opens a connection per
request, and a task plus ``wait_for`` per read cost a third of the throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from keychest.config import LineServerSettings
from keychest.protocol import proxy
from keychest.protocol.line import LineError, LineFramer, Response, format_response, parse_request
from keychest.servers.dispatch import Deliver, Dispatcher, result_response
from keychest.service.errors import StorageUnavailable
from keychest.service.facade import Call, Keychest

log = logging.getLogger("keychest.line")

# Many requests under one commit; bounded so one batch cannot hold the writer for long.
MAX_BATCH = 1000
# Pauses before repeating a batch the database refused for want of a connection.
RETRY_DELAYS_S = (0.5, 2.0)
# Reads (`expiration`) run on this many threads, each with a read connection of its own.
MAX_READERS = 4
# How long a key's last-use stamp noted by a read may wait for a commit to carry it.
STAMP_FLUSH_S = 1.0
# A client that pipelines without reading its answers is paused at this many pending.
MAX_PENDING_PER_CONNECTION = 64
# A TLS client has this long to complete its handshake (and, with --proxy-protocol, the
# balancer to send its PROXY header before it): until then it is no connection that a cap counts.
TLS_HANDSHAKE_TIMEOUT_S = 10.0
# After accept() failed for want of descriptors (EMFILE), as asyncio's own listener waits.
ACCEPT_RETRY_S = 1.0

OVERLOADED = format_response(Response(503, "too many connections; retry later"))
OVERLOADED_BY_YOU = format_response(Response(503, "too many connections from your address; retry later"))
TOO_LONG = format_response(LineError(413, "line too long").response())
PROXY_REFUSED = format_response(
    Response(403, "PROXY header from an address that is not a trusted proxy (--trusted-proxies)")
)


class WriteBatcher:
    """Collects writes and runs them in batches on one thread: one commit, one fsync, per batch.

    Reads (a Call with ``read``) skip the queue: they run on reader threads with read
    connections, and the last-use stamps they note ride on the next commit (or on a small
    commit of their own after STAMP_FLUSH_S when no write comes).
    """

    def __init__(self, service: Keychest) -> None:
        self.service = service
        self._pending: list[tuple[Call, Callable[[Any], Response], Deliver]] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="keychest-writer")
        # The writer holds one pooled connection; the HTTP API wants some too.
        readers = max(1, min(MAX_READERS, service.settings.db_pool_size - 2))
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="keychest-reader")
        self._busy = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stamp_timer: asyncio.TimerHandle | None = None
        self._reading = 0
        self.batches = 0
        self.calls = 0
        self.reads = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def submit(self, call: Call, finish: Callable[[Any], Response], deliver: Deliver) -> None:
        """Queue a call; after its commit, ``deliver`` gets the answer (on the event loop)."""
        assert self._loop is not None, "start() first"
        if call.read:
            self._read(call, finish, deliver)
            return
        self._pending.append((call, finish, deliver))
        if not self._busy:
            self._run_next()

    def _read(self, call: Call, finish: Callable[[Any], Response], deliver: Deliver) -> None:
        assert self._loop is not None
        self._reading += 1
        done = self._loop.run_in_executor(self._readers, self._read_one, call)
        done.add_done_callback(lambda fut: self._read_done(finish, deliver, fut))

    def _read_one(self, call: Call) -> object:
        try:
            return self.service.read_call(call)
        except StorageUnavailable as exc:
            log.error("database unavailable; a read answered 503: %s", exc.__cause__ or exc)
            return exc
        except Exception as exc:  # a bug: this request gets a 500
            log.exception("read %s failed", getattr(call.fn, "__name__", call.fn))
            return exc

    def _read_done(
        self, finish: Callable[[Any], Response], deliver: Deliver, fut: asyncio.Future[object]
    ) -> None:
        self._reading -= 1
        self.reads += 1
        result = fut.result() if not fut.cancelled() else RuntimeError("cancelled")
        try:
            deliver(result_response(result, finish))
        except Exception:
            log.exception("delivering an answer failed")
        self._schedule_stamps()

    def _schedule_stamps(self) -> None:
        if self._stamp_timer is None and len(self.service.stamps) and self._loop is not None:
            self._stamp_timer = self._loop.call_later(STAMP_FLUSH_S, self._flush_stamps)

    def _flush_stamps(self) -> None:
        """No write came to carry the noted stamps: a commit of its own (call_batch of none)."""
        self._stamp_timer = None
        if not len(self.service.stamps):
            return
        if self._busy:
            # The batch running now may have begun before these stamps: check after it.
            self._schedule_stamps()
            return
        self._run_next()

    def _run_next(self) -> None:
        assert self._loop is not None
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        self._busy = True
        done = self._loop.run_in_executor(self._executor, self._commit, [call for call, _, _ in batch])
        done.add_done_callback(lambda fut: self._finished(batch, fut))

    def _commit(self, calls: list[Call]) -> list[object]:
        attempt = 0
        while True:
            try:
                return self.service.call_batch(calls)
            except StorageUnavailable as exc:
                # Repeating the batch is safe even when the failure hit the COMMIT itself:
                # adds and claims are idempotent, and a repeated `apikey` only leaves an
                # unused key behind.
                cause = exc.__cause__ or exc
                if not exc.retry or attempt == len(RETRY_DELAYS_S):
                    log.error("database unavailable; %d requests answered 503: %s", len(calls), cause)
                    return [exc] * len(calls)
                delay = RETRY_DELAYS_S[attempt]
                attempt += 1
                log.warning("database unavailable; retrying %d requests in %gs: %s", len(calls), delay, cause)
                time.sleep(delay)
            except Exception as exc:  # a bug: every request of the batch gets a 500, none an ok
                log.exception("write batch of %d failed", len(calls))
                return [exc] * len(calls)

    def _finished(
        self, batch: list[tuple[Call, Callable[[Any], Response], Deliver]], fut: asyncio.Future[list[object]]
    ) -> None:
        results = fut.result() if not fut.cancelled() else [RuntimeError("cancelled")] * len(batch)
        self.batches += 1
        self.calls += len(batch)
        for (_, finish, deliver), result in zip(batch, results, strict=True):
            try:
                deliver(result_response(result, finish))
            except Exception:  # one connection's failure must not keep the others' answers
                log.exception("delivering an answer failed")
        self._busy = False
        if self._pending:
            self._run_next()
        else:
            self._schedule_stamps()

    async def stop(self) -> None:
        # Let what was accepted finish: its clients are waiting for a durable answer.
        while self._busy or self._pending or self._reading:
            await asyncio.sleep(0.01)
        if self._stamp_timer is not None:
            self._stamp_timer.cancel()
            self._stamp_timer = None
        if len(self.service.stamps):
            # The stamps noted by the last reads: one more commit rather than losing them.
            self._run_next()
            while self._busy:
                await asyncio.sleep(0.01)
        self._readers.shutdown(wait=True)
        self._executor.shutdown(wait=True)
        if self.batches:
            log.info(
                "writer: %d requests in %d commits (%.1f a commit), %d reads",
                self.calls,
                self.batches,
                self.calls / self.batches,
                self.reads,
            )


def client_key(ip: str | None) -> str:
    """Whose connection this is, for the per-address cap: an IPv4 address, or an IPv6 /64.

    One IPv6 host is usually given a whole /64, so counting single IPv6 addresses would
    let it open as many connections as it likes.
    """
    if ip is None or ":" not in ip:
        return ip or "-"
    try:
        address = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:  # a dual-stack socket's IPv4 client
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class Admission:
    """Connections open now, in total and per client address, over every line listener."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self.per_client: dict[str, int] = {}

    def admit(self, client: str) -> bytes | None:
        """None when the connection may stay (and is counted); else the refusal to send."""
        if self.total >= self.max_total:
            return OVERLOADED
        held = self.per_client.get(client, 0)
        if 0 < self.max_per_client <= held:
            return OVERLOADED_BY_YOU
        self.total += 1
        self.per_client[client] = held + 1
        return None

    def release(self, client: str) -> None:
        self.total -= 1
        held = self.per_client.pop(client, 1) - 1
        if held > 0:
            self.per_client[client] = held


class _Slot:
    """An answer owed to a connection, filled in when the writer's commit returns."""

    __slots__ = ("connection", "command", "data")

    def __init__(self, connection: LineConnection, command: str) -> None:
        self.connection = connection
        self.command = command
        self.data: bytes | None = None

    def __call__(self, response: Response) -> None:
        self.data = format_response(response)
        self.connection.server.count(self.command, response.code)
        self.connection._flush()


def _proxy_like(data: bytes) -> bool:
    return data.startswith(proxy.V1_PREFIX) or data.startswith(proxy.V2_SIGNATURE[:8])


class LineConnection(asyncio.Protocol):
    """One client: requests in, answers out in the same order, each in one write."""

    def __init__(self, server: LineServer, ip: str | None = None) -> None:
        self.server = server
        # The client's address when the TLS listener's gate read the PROXY header already
        # (LineServer._gate): this connection then takes no header of its own.
        self.gated_ip = ip
        self.settings = server.settings
        self.framer = LineFramer()
        self.outq: deque[bytes | _Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.ip: str | None = None
        self.client: str | None = None  # set once admitted: counted in server.admission
        self.answered = 0
        self.closing = False
        self.reading_paused = False
        self.writing_paused = False
        self.last_activity = 0.0
        self.pause_timer: asyncio.TimerHandle | None = None
        # --proxy-protocol: a trusted proxy's connection starts with a header naming the client;
        # None once it was read (or when none is expected).
        self.proxy_buffer: bytes | None = None
        self.first_bytes = True

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else None
        self.last_activity = server.loop.time()
        if self.gated_ip is not None:
            self.ip = self.gated_ip
            self.first_bytes = False
        elif server.proxy_protocol and proxy.is_trusted(self.ip, server.trusted_proxies):
            # Admitted (counted per address) once the header says whose connection it is.
            self.proxy_buffer = b""
            return
        self._admit()

    def _admit(self) -> None:
        assert self.transport is not None
        server = self.server
        client = client_key(self.ip)
        refusal = server.admission.admit(client)
        if refusal is not None:
            self.transport.write(refusal)
            server.count("overload", 503)
            self._close()
            return
        self.client = client

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.proxy_buffer is not None:
            data = self._proxy_header(self.proxy_buffer + data)
            if not data:
                return
        elif self.first_bytes and self.server.proxy_protocol and _proxy_like(data):
            # Anyone may type a PROXY header; only a trusted proxy's names the client.
            self._refuse(PROXY_REFUSED, 403)
            return
        self.first_bytes = False
        for line in self.framer.feed(data):
            self._request(line)
        if self.framer.overflowed:
            self.outq.append(TOO_LONG)
            self.server.count("invalid", 413)
            self.closing = True
        elif self.framer.has_pending:
            # The `echo -ne` case: no newline, so a short pause ends the request.
            if self.pause_timer is not None:
                self.pause_timer.cancel()
            self.pause_timer = self.server.loop.call_later(
                self.settings.partial_line_pause_s, self._flush_partial
            )
        self._flush()

    def eof_received(self) -> bool:
        if self.framer.has_pending and not self.closing:
            self._request(self.framer.take_pending())
        self.closing = True
        self._flush()
        # Plain TCP: keep the socket open for writing until every answer went out. TLS cannot
        # half-close (asyncio closes after the peer's close_notify whatever this returns).
        return self.server.tls is None

    def _proxy_header(self, data: bytes) -> bytes:
        """Read the PROXY header from a trusted proxy; returns the client's bytes after it."""
        try:
            header = proxy.parse(data)
        except proxy.ProxyError as exc:
            self.proxy_buffer = None
            self._refuse(format_response(Response(400, str(exc))), 400)
            return b""
        if header is None:
            self.proxy_buffer = data
            return b""
        self.proxy_buffer = None
        if header.source is not None:  # else LOCAL/UNKNOWN: the proxy's own health check
            self.ip = header.source
        self._admit()
        return b"" if self.closing else data[header.length :]

    def _refuse(self, answer: bytes, code: int) -> None:
        if self.transport is not None:
            self.transport.write(answer)
        self.server.count("invalid", code)
        self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.client is not None:
            self.server.admission.release(self.client)
            self.client = None
        if self.pause_timer is not None:
            self.pause_timer.cancel()
        self.transport = None

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._update_reading()

    # -- requests and answers -----------------------------------------------------------

    def _request(self, line: bytes) -> None:
        if self.closing:
            return
        try:
            request = parse_request(line)
        except LineError as exc:
            self.outq.append(format_response(exc.response()))
            self.server.count("invalid", exc.code)
            return
        if request is None:
            return
        # Only a request counts as activity: blank lines or bytes that never make a valid
        # request do not keep a connection past --idle-timeout.
        self.last_activity = self.server.loop.time()
        self.answered += 1
        if self.answered >= self.settings.max_requests_per_connection:
            self.closing = True
        slot = _Slot(self, request.command)
        try:
            answer = self.server.dispatcher.handle(request, self.ip, slot)
        except Exception:
            log.exception("request %s failed", request.command)
            answer = Response(500, "internal error; nothing was changed")
        if answer is not None:
            self.outq.append(format_response(answer))
            self.server.count(request.command, answer.code)
        else:
            self.outq.append(slot)
            self._update_reading()

    def _flush(self) -> None:
        """Write every answer that is ready, in request order; close when done and asked to."""
        transport = self.transport
        if transport is None:
            return
        outq = self.outq
        while outq:
            head = outq[0]
            if isinstance(head, bytes):
                transport.write(head)
            elif head.data is not None:
                transport.write(head.data)
            else:
                break
            outq.popleft()
        self._update_reading()
        if self.closing and not outq:
            self._close()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        busy = self.writing_paused or len(self.outq) >= MAX_PENDING_PER_CONNECTION
        if busy and not self.reading_paused:
            transport.pause_reading()
            self.reading_paused = True
        elif not busy and self.reading_paused:
            transport.resume_reading()
            self.reading_paused = False

    def _flush_partial(self) -> None:
        self.pause_timer = None
        if self.framer.has_pending and not self.closing:
            self._request(self.framer.take_pending())
            self._flush()

    def idle_since(self, now: float) -> float:
        """Seconds since the client's last request, or 0 while answers are still owed."""
        return 0.0 if self.outq else now - self.last_activity

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class LineServer:
    """One listener of the line API: plain TCP, or TLS when given an SSL context.

    Listeners of one process share an :class:`Admission`, so the connection caps hold
    over plain and TLS connections together.
    """

    def __init__(
        self,
        settings: LineServerSettings,
        dispatcher: Dispatcher,
        on_response: Callable[[str, int], None] | None = None,
        *,
        admission: Admission | None = None,
        tls: ssl.SSLContext | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.on_response = on_response
        self.admission = admission or Admission(settings.max_connections, settings.max_connections_per_ip)
        self.tls = tls
        # On the plain listener a connection reads its PROXY header itself. Over TLS the header
        # comes in plaintext before the ClientHello, where asyncio's TLS listener would take it
        # for a broken handshake: that listener accepts its sockets itself (_accept, _gate).
        self.proxy_protocol = settings.proxy_protocol
        self.trusted_proxies = proxy.parse_networks(settings.trusted_proxies)
        self.host = settings.host if host is None else host
        self.port = settings.port if port is None else port
        self.connections: set[LineConnection] = set()
        self._server: asyncio.Server | None = None
        # The TLS listener with --proxy-protocol: its sockets, accept loops, and the accepted
        # sockets whose header or handshake is still to come.
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._gates: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_event_loop()

    def count(self, command: str, code: int) -> None:
        if self.on_response is not None:
            self.on_response(command, code)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.tls is not None and self.proxy_protocol:
            self._listeners = await _listen(self.loop, self.host, self.port)
            self._accepting = [self.loop.create_task(self._accept(sock)) for sock in self._listeners]
        else:
            self._server = await self.loop.create_server(
                lambda: LineConnection(self),
                self.host,
                self.port,
                backlog=4096,
                ssl=self.tls,
                # A client that never finishes its handshake is not yet a connection (no cap
                # counts it): it must not hold a socket for long.
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if self.tls is not None else None,
            )
        log.info(
            "line API%s%s listening on %s",
            " over TLS" if self.tls else "",
            " (PROXY protocol from trusted proxies)" if self.proxy_protocol else "",
            ", ".join(self.addresses),
        )
        self._sweep()

    async def _accept(self, listener: socket.socket) -> None:
        """The TLS listener's accept loop with --proxy-protocol: each socket goes to _gate."""
        loop = self.loop
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:  # out of descriptors: the client waits in the backlog
                log.error("line API over TLS: accept failed, retrying in %gs: %s", ACCEPT_RETRY_S, exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if len(self._gates) >= self.admission.max_total:
                # Sockets before their handshake are bounded too, as connections after it are.
                sock.close()
                self.count("overload", 503)
                continue
            gate = loop.create_task(self._gate(sock, peer[0] if peer else None))
            self._gates.add(gate)
            gate.add_done_callback(self._gates.discard)

    async def _gate(self, sock: socket.socket, ip: str | None) -> None:
        """A trusted proxy's PROXY header, off the socket before TLS begins; then the handshake.

        Exactly the header's bytes are read (the ClientHello after it, in the same segment or
        not, stays for TLS), within the handshake's time-out, which covers both. The rules
        are the plain listener's, answered in plaintext since there is no TLS yet: a trusted
        peer without a valid header gets a 400, a PROXY header from anyone else a 403, and
        the socket is closed; a client that just starts TLS is served under its own address.
        """
        loop = self.loop
        deadline = loop.time() + TLS_HANDSHAKE_TIMEOUT_S
        peer = ip
        sock.setblocking(False)
        try:
            async with asyncio.timeout_at(deadline):
                if proxy.is_trusted(peer, self.trusted_proxies):
                    header = await _read_proxy_header(loop, sock)
                    if header.source is not None:  # else LOCAL/UNKNOWN: the proxy's own check
                        ip = header.source
                else:
                    first = await _peek(loop, sock, 16)
                    if not first:
                        sock.close()
                        return
                    if proxy.starts_like_header(first):
                        log.info("line API over TLS: a PROXY header from %s, not a trusted proxy", peer)
                        self._refuse_plain(sock, PROXY_REFUSED, 403)
                        return
        except proxy.ProxyError as exc:
            log.warning("line API over TLS: trusted proxy %s: %s", peer, exc)
            self._refuse_plain(sock, format_response(Response(400, str(exc))), 400)
            return
        except (TimeoutError, OSError):  # slow, silent or gone before its header
            sock.close()
            return
        except BaseException:  # cancelled (stop): the socket was not handed over yet
            sock.close()
            raise
        client = ip
        try:
            # The loop owns the socket from here, and closes it should the handshake fail.
            await loop.connect_accepted_socket(
                lambda: LineConnection(self, client),
                sock,
                ssl=self.tls,
                ssl_handshake_timeout=max(1.0, deadline - loop.time()),
            )
        except Exception as exc:  # a failed handshake: nobody to tell
            log.debug("line API over TLS: handshake with %s (via %s) failed: %r", client, peer, exc)

    def _refuse_plain(self, sock: socket.socket, answer: bytes, code: int) -> None:
        """Answer before TLS and close. What the peer sent already is read first: closing
        with unread bytes would reset the connection, and the answer could be lost."""
        with contextlib.suppress(OSError):
            for _ in range(16):
                if not sock.recv(65536):
                    break
        with contextlib.suppress(OSError):
            sock.send(answer)
            sock.shutdown(socket.SHUT_WR)
        sock.close()
        self.count("invalid", code)

    @property
    def addresses(self) -> list[str]:
        """HOST:PORT of each listening socket ([HOST]:PORT for IPv6)."""
        names = [sock.getsockname() for sock in self._listeners]
        if self._server is not None:
            names += [sock.getsockname() for sock in self._server.sockets]
        out = []
        for name in names:
            host, port = name[:2]
            out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return out

    def _sweep(self) -> None:
        """Close idle connections. One timer for all: a timer per connection costs throughput."""
        now = self.loop.time()
        limit = self.settings.idle_timeout_s
        for connection in [c for c in self.connections if c.idle_since(now) >= limit]:
            connection._close()
        self._sweeper = self.loop.call_later(min(1.0, limit / 4), self._sweep)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting; give open connections a moment to receive what they are owed."""
        if self._server is not None:
            self._server.close()
        for task in (*self._accepting, *self._gates):
            task.cancel()
        await asyncio.gather(*self._accepting, *self._gates, return_exceptions=True)
        for sock in self._listeners:
            sock.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = self.loop.time() + grace_s
        while any(c.outq for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection._close()


async def _listen(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host``, as ``loop.create_server`` binds them."""
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(4096)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes that have come, left unread; b"" when the peer closed."""
    while True:
        await _readable(loop, sock)
        try:
            return sock.recv(size, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue


async def _read_proxy_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> proxy.ProxyHeader:
    """Read exactly the PROXY header's bytes: what follows it stays unread on the socket.

    Each round peeks at what has come and reads only the part that belongs to the header
    (all of it while the header is incomplete), so a header that ends in the middle of a
    segment leaves the ClientHello behind it in place. Raises ProxyError, or ConnectionError
    when the peer closes first.
    """
    taken = b""
    while True:
        ahead = await _peek(loop, sock, proxy.V2_MAX - len(taken))
        if not ahead:
            raise ConnectionError("closed before the end of the PROXY header")
        header = proxy.parse(taken + ahead)
        want = len(ahead) if header is None else header.length - len(taken)
        taken += sock.recv(want)
        if header is not None and len(taken) == header.length:
            return header
