"""Reading a REST request: the body (JSON or form) as flat strings, the API key, fields.

:func:`respond` is the one way a route runs: it parses the body, hands an :class:`Exchange`
to the route's work function in a thread (the database is synchronous) and turns a
:class:`ServiceError` into the JSON error shape.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qs

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from keychest.service.context import Ctx
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest
from keychest.web.rest.limits import MAX_BODY
from keychest.web.rest.models import error_response

P = ParamSpec("P")
T = TypeVar("T")


async def read_payload(request: Request) -> dict[str, str]:
    """The body as a flat dict of strings: JSON object or form, whichever the client sent."""
    if request.method in ("GET", "HEAD", "DELETE"):
        return {}
    raw = await request.body()
    if not raw.strip():
        return {}
    if len(raw) > MAX_BODY:
        raise ServiceError(413, "too_large", f"request body over {MAX_BODY} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded" or (
        kind != "application/json" and not raw.lstrip().startswith(b"{")
    ):
        try:
            parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise ServiceError(422, "invalid", "the form is not UTF-8") from None
        return {name: values[-1] for name, values in parsed.items()}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ServiceError(422, "invalid", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ServiceError(422, "invalid", "the body must be a JSON object")
    values: dict[str, str] = {}
    for name, value in data.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise ServiceError(422, "invalid", f"{name} must be a string")
        values[name] = value
    return values


def api_key(request: Request, payload: dict[str, str]) -> str:
    key = request.query_params.get("api_key") or payload.get("api_key")
    if key:
        return key
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ServiceError(401, "unauthorized", "malformed Basic credentials") from None
        # The password is the key; `curl -u KEY:` puts it in the user name, which we take too.
        if password or user:
            return password or user
    raise ServiceError(401, "unauthorized", "API key required: api_key=..., a Bearer token or Basic auth")


def required(payload: dict[str, str], name: str) -> str:
    value = payload.get(name)
    if value is None or value == "":
        raise ServiceError(422, "invalid", f"{name} is required")
    return value


def split_keychest_path(domain: str, payload: dict[str, str]) -> tuple[str, dict[str, str]]:
    """KeyChest's own docs show `servers/expiration/DOMAIN&api_key=KEY` (no `?`): accept that."""
    if "&" in domain:
        domain, _, rest = domain.partition("&")
        extra = {name: values[-1] for name, values in parse_qs(rest).items()}
        payload = {**extra, **payload}
    return domain, payload


@dataclass(frozen=True)
class Exchange:
    """One REST request as a route's work sees it: the parsed body, the caller, the service."""

    request: Request
    payload: dict[str, str]
    service: Keychest

    @property
    def ip(self) -> str | None:
        return self.request.client.host if self.request.client else None

    def key(self) -> str:
        return api_key(self.request, self.payload)

    def field(self, name: str) -> str:
        """A required value, from the query string or else the body."""
        return self.request.query_params.get(name) or required(self.payload, name)

    def call(self, fn: Callable[Concatenate[Ctx, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        # Always a write transaction: even a read records the key's last use (keys.use).
        return self.service.call(fn, *args, ip=self.ip, **kwargs)


async def respond(request: Request, service: Keychest, work: Callable[[Exchange], Any]) -> Any:
    """Parse the body, run ``work`` in a thread (the database is synchronous), map errors."""
    try:
        payload = await read_payload(request)
        return await run_in_threadpool(work, Exchange(request, payload, service))
    except ServiceError as exc:
        return error_response(exc.code, exc.status, exc.text)
