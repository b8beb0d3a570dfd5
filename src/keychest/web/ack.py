"""The page behind a notification's ``ack_url``: acknowledge an incident.

As with the links in mails (web.mailflow), a GET only shows what the link will do and one
button; only the POST acts, because chat apps and link previews fetch links. The token in the
URL is the secret (single use), so the form needs no CSRF token.
"""

from __future__ import annotations

import asyncio
from html import escape

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from keychest.service import incidents
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{escape(title)} - keychest</title>'
        '<link rel="stylesheet" href="/static/dashboard.css"></head>'
        f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _describe(view: incidents.AckView) -> str:
    state = "still open" if view.open else "over"
    return (
        f"<p><strong>{escape(view.type)}</strong> ({escape(view.severity)}) on {escape(view.endpoint)}, "
        f"since {escape(view.opened_at)}: {state}.</p>"
    )


def install(app: FastAPI, service: Keychest) -> None:
    @app.get("/ack/{token}", include_in_schema=False)
    async def ack_page(token: str) -> HTMLResponse:
        try:
            view = await asyncio.to_thread(service.read, incidents.ack_info, token)
        except ServiceError as exc:
            return _page("Link not valid", f"<p>{escape(exc.text)}</p>", exc.code)
        form = (
            f'<form method="post" action="/ack/{escape(token)}">'
            '<button type="submit">Acknowledge: stop repeating it</button></form>'
            "<p>It is sent again only if it changes or gets worse.</p>"
        )
        return _page("Acknowledge an incident", _describe(view) + form)

    @app.post("/ack/{token}", include_in_schema=False)
    async def ack(token: str) -> HTMLResponse:
        try:
            view = await asyncio.to_thread(service.call, incidents.acknowledge, token)
        except ServiceError as exc:
            return _page("Link not valid", f"<p>{escape(exc.text)}</p>", exc.code)
        return _page(
            "Acknowledged",
            _describe(view) + "<p>It will not be repeated unless it changes or gets worse.</p>",
        )
