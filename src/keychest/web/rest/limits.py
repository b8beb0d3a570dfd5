"""The request-body limit, enforced as ASGI middleware before any route reads a byte too many."""

from __future__ import annotations

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
