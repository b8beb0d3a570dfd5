"""Limits on REST requests: the body size (ASGI middleware, before any route reads a byte
too many), request rates per key and per address with their headers, and HEAD as GET."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import PlainTextResponse

from keychest.web.rest.models import error_response

MAX_BODY = 128 * 1024


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes on every HTTP route, before reading them all.

    Starlette buffers a whole body (``request.body()``, ``request.form()``) before any check of
    ours could run, so a client could make the server hold gigabytes; this stops at the limit,
    by Content-Length when given and while streaming otherwise (chunked uploads).
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Any, send: Any) -> None:
        text = f"request body over {self.limit} bytes"
        response: Any
        if str(scope.get("path", "")).startswith("/api/"):
            response = error_response(413, "too_large", text)
        else:
            response = PlainTextResponse(text, status_code=413)
        await response(scope, _no_receive, send)


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}


# --- request rates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quota:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int


class RateWindow:
    """Requests per identity (an API key, a client address) in fixed windows, in memory.

    Per process: a client spread over several ``--role api`` processes gets the limit in each.
    ``limit`` zero or less switches it off. Called on the event loop only, so no lock.
    """

    def __init__(
        self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._counts: dict[str, tuple[float, int]] = {}

    def _current(self, who: str, now: float) -> tuple[float, int]:
        start, count = self._counts.get(who, (now, 0))
        if now - start >= self.window_s:
            return now, 0
        return start, count

    def _quota(self, allowed: bool, start: float, count: int, now: float) -> Quota:
        retry = max(1, math.ceil(start + self.window_s - now))
        return Quota(allowed, self.limit, max(0, self.limit - count), retry)

    def take(self, who: str) -> Quota:
        """Count one request of ``who``, unless its window is full already."""
        now = self.clock()
        start, count = self._current(who, now)
        if self.limit <= 0:
            return Quota(True, 0, 0, 0)
        if count >= self.limit:
            return self._quota(False, start, count, now)
        self._counts[who] = (start, count + 1)
        if len(self._counts) > 100_000:
            self._forget(now)
        return self._quota(True, start, count + 1, now)

    def full(self, who: str) -> Quota | None:
        """The quota of ``who`` if its window is full (without counting), else None."""
        if self.limit <= 0:
            return None
        now = self.clock()
        start, count = self._current(who, now)
        return self._quota(False, start, count, now) if count >= self.limit else None

    def _forget(self, now: float) -> None:
        for who in [w for w, (start, _) in self._counts.items() if now - start >= self.window_s]:
            del self._counts[who]


RATE_STATE = "keychest_rate_limit"


class RateHeaders:
    """Put ``X-RateLimit-Limit``/``X-RateLimit-Remaining`` on answers whose route set a quota.

    The routes keep returning plain answers (validated against their models by FastAPI); the
    quota travels in the request's state, which this shares with them.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def with_headers(message: Any) -> None:
            quota = state.get(RATE_STATE)
            if message["type"] == "http.response.start" and isinstance(quota, Quota) and quota.limit > 0:
                headers = list(message.get("headers") or [])
                headers.append((b"x-ratelimit-limit", str(quota.limit).encode()))
                headers.append((b"x-ratelimit-remaining", str(quota.remaining).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class HeadAsGet:
    """Answer ``HEAD`` wherever ``GET`` works: run the GET and send its status and headers only.

    FastAPI routes declare GET alone (Starlette adds HEAD only for its own routes), and the
    OpenAPI schema stays as it is.
    """

    def __init__(self, app: Any, effectful: tuple[str, ...] = ()) -> None:
        self.app = app
        # GETs that change something (KeyChest's claim makes a key and sends a mail): a HEAD
        # from a link checker or previewer must not do that.
        self.effectful = effectful

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return
        if str(scope.get("path", "")).startswith(self.effectful):
            response = error_response(405, "method_not_allowed", "HEAD would act here; use GET")
            response.headers["Allow"] = "GET"
            await response(scope, _no_receive, send)
            return

        async def headers_only(message: Any) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
