"""The HTTP listener: uvicorn on a socket bound before start-up, with slowloris limits.

uvicorn closes a keep-alive connection that stays idle between requests, but it has no
time-out for a request still arriving: a client that sends its headers (or its body) a byte
at a time holds a connection, and a task once the headers are in, for as long as it likes.
:class:`GuardedH11Protocol` gives every request a deadline from the moment the connection
opened or the previous response went out, and turns connections beyond the cap away at once.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from keychest.config import Settings
from keychest.protocol.proxy import parse_networks

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 30\r\nconnection: close\r\n\r\ntoo many connections; retry.\r\n"
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request deadline and a connection cap."""

    request_timeout_s: float = 10.0
    max_connections: int = 1000
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(BUSY)
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # Armed first: uvicorn may start a pipelined request right away in the call below.
        self._arm()
        super().on_response_complete()

    def _arm(self) -> None:
        """The next request (headers and body) must have arrived within request_timeout_s."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.request_timeout_s, self._expire, self.cycle)

    def _expire(self, cycle_at_arming: object) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        waiting_for_headers = cycle is cycle_at_arming
        waiting_for_body = cycle is not None and not waiting_for_headers and cycle.more_body
        if waiting_for_headers or waiting_for_body:
            # connection_lost tells h11 and a waiting request cycle (it is disconnected).
            self.transport.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound now so that a port in use is known before anything starts."""
    # A name (localhost) binds its first address, as a literal binds itself.
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def http_server(app: FastAPI, settings: Settings) -> uvicorn.Server:
    protocol = type(
        "KeychestH11Protocol",
        (GuardedH11Protocol,),
        {
            "request_timeout_s": settings.http_request_timeout_s,
            "max_connections": settings.http_max_connections,
        },
    )
    config = uvicorn.Config(
        app,
        http=protocol,
        log_level="warning",
        lifespan="off",
        # Idle keep-alive connections go after 5 s (uvicorn's default, said here on purpose).
        timeout_keep_alive=5,
        # Requests beyond this many connections or running tasks are answered 503 by uvicorn.
        limit_concurrency=settings.http_max_connections,
        # A request head (line and headers) may be this large before h11 refuses it (400).
        h11_max_incomplete_event_size=16 * 1024,
        # X-Forwarded-For/-Proto only from --trusted-proxies (uvicorn would trust 127.0.0.1 by
        # default): the client address behind the balancer, for quotas and the audit log.
        proxy_headers=bool(settings.line.trusted_proxies),
        forwarded_allow_ips=[str(n) for n in parse_networks(settings.line.trusted_proxies)],
    )
    # uvicorn catches SIGTERM/SIGINT while it serves and sets should_exit: its task then ends,
    # which stops the process like our own handlers do.
    return uvicorn.Server(config)
