"""Pages behind the links in mails, and "mail me a sign-in link".

A GET only shows what the link will do and one button; only the POST that button submits
acts, because mail scanners and link previews follow links in mails. The token in the URL
is the secret, so these forms need no CSRF token; the POST itself is what is required.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote, unquote, urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from keychest.service import links
from keychest.service.context import Ctx
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest
from keychest.web import session

P = ParamSpec("P")
T = TypeVar("T")

# path prefix -> links.ROUTES name, and what the page says about the button
PAGES: dict[str, tuple[str, str, str]] = {
    "confirm": ("confirm", "Confirm your keychest account", "Confirm my account"),
    "block": ("block", "Block this account", "Block the account and its API keys"),
    "keys/approve": ("approve", "Approve an API key", "Approve this key"),
    "keys/revoke": ("revoke", "Revoke an API key", "Revoke this key"),
    "signin": ("signin", "Sign in to keychest", "Sign in"),
    "unsubscribe": ("unsubscribe", "Unsubscribe", "Unsubscribe"),
    "confirm-address": ("confirm_address", "Confirm your address", "Send notifications here"),
    "reopen": ("reopen", "Reopen your address", "Reopen my address"),
}


@functools.cache
def _env() -> Environment:
    return Environment(
        loader=PackageLoader("keychest.web", "templates/mailflow"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
    )


# The token in a link's URL is the secret, so no CSRF token is needed to act on one's own
# link; but another site must not make a victim's browser submit the attacker's own sign-in
# or confirm link (login CSRF), by a cross-site form or by framing the one-button page.
HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env().get_template(template).render(**context), status_code=status, headers=HEADERS)


def cross_site(request: Request) -> bool:
    """A POST that a browser says came from another site (Sec-Fetch-Site, else Origin).

    Clients that send neither (curl, scripts) are let through: they hold the token themselves.
    ``Origin: null`` is what our own no-referrer pages send, so it is not refused either.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site == "cross-site"
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _secure(service: Keychest) -> bool:
    return service.settings.mail.public_url.startswith("https://")


# Where the dashboard sent a visitor who was not signed in (/signin?next=/servers). Kept in a
# short-lived cookie because the sign-in itself happens later, from the mailed link.
NEXT_COOKIE = "keychest_next"
NEXT_MAX_AGE_S = 3600


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirect).

    Browsers read ``//host``, ``/\\host`` and paths with tabs or newlines in them as other
    hosts, so only a single leading slash followed by printable, backslash-free text passes.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def install(app: FastAPI, service: Keychest) -> None:
    async def call(
        ip: str | None, fn: Callable[Concatenate[Ctx, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        # Service calls block on the database: keep them off the event loop.
        return await asyncio.to_thread(service.from_ip(ip).call, fn, *args, **kwargs)

    def error_page(title: str, exc: ServiceError) -> HTMLResponse:
        return page("message.html", status=exc.code, title=title, message=exc.text, ok=False)

    def add_link_routes(prefix: str, route: str, title: str, button: str) -> None:
        async def show(token: str, request: Request) -> Response:
            try:
                view = await call(_ip(request), links.view, route, token)
            except ServiceError as exc:
                return error_page(title, exc)
            return page("confirm.html", title=title, button=button, view=view, action=request.url.path)

        async def act(token: str, request: Request) -> Response:
            if cross_site(request):
                return page(
                    "message.html",
                    status=403,
                    title=title,
                    message="This form was sent from another site. Open the link from your mail.",
                    ok=False,
                )
            try:
                done = await call(_ip(request), links.act, route, token)
            except ServiceError as exc:
                return error_page(title, exc)
            if done.sign_in:
                target = safe_next(unquote(request.cookies.get(NEXT_COOKIE, ""))) or "/"
                response = RedirectResponse(target, status_code=303)
                await asyncio.to_thread(
                    session.sign_in, service, response, done.account_id, secure=_secure(service)
                )
                response.delete_cookie(NEXT_COOKIE, path="/")
                return response
            return page("message.html", title=title, message=done.message, ok=True)

        app.add_api_route(f"/{prefix}/{{token}}", show, methods=["GET"], include_in_schema=False)
        app.add_api_route(f"/{prefix}/{{token}}", act, methods=["POST"], include_in_schema=False)

    for prefix, (route, title, button) in PAGES.items():
        add_link_routes(prefix, route, title, button)

    @app.get("/signin", include_in_schema=False)
    async def signin_form(request: Request) -> Response:
        response = page("signin.html", title="Sign in to keychest", sent=False, error=None)
        target = safe_next(request.query_params.get("next"))
        if target is not None:
            response.set_cookie(
                NEXT_COOKIE,
                quote(target, safe=""),
                max_age=NEXT_MAX_AGE_S,
                httponly=True,
                samesite="lax",
                secure=_secure(service),
                path="/",
            )
        return response

    @app.post("/signin", include_in_schema=False)
    async def signin_request(request: Request, email: str = Form("")) -> Response:
        try:
            await call(_ip(request), links.request_signin, email)
        except ServiceError as exc:
            return page(
                "signin.html", status=exc.code, title="Sign in to keychest", sent=False, error=exc.text
            )
        # The same answer whether or not the address has an account.
        return page("signin.html", title="Sign in to keychest", sent=True, error=None)
