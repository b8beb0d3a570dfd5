"""Reading a REST request: the body (JSON, form or multipart) as flat strings, the API key,
fields; and :func:`respond`, the one way a route runs.

Inputs are read the way KeyChest v1.0 clients send them: every string trimmed (a key read
from a file keeps its newline), values of fields we do not use ignored whatever their JSON
type, ``curl -F`` (multipart, files included) read like a form.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from keychest.service.context import Ctx
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest
from keychest.web.rest.limits import MAX_BODY, RATE_STATE, Quota, RateWindow
from keychest.web.rest.models import error_response

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Payload:
    values: dict[str, str] = field(default_factory=dict)
    # Fields sent with a JSON value other than a string: refused only if a route reads them.
    not_strings: frozenset[str] = frozenset()


async def read_payload(request: Request) -> Payload:
    """The body as flat, trimmed strings: JSON object, form or multipart, whichever was sent."""
    if request.method in ("GET", "HEAD", "DELETE"):
        return Payload()
    raw = await request.body()
    if not raw.strip():
        return Payload()
    if len(raw) > MAX_BODY:
        raise ServiceError(413, "too_large", f"request body over {MAX_BODY} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _multipart(request)
    if kind == "application/x-www-form-urlencoded" or (
        kind != "application/json" and not raw.lstrip().startswith(b"{")
    ):
        try:
            parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise ServiceError(422, "invalid", "the form is not UTF-8") from None
        return Payload({name: values[-1].strip() for name, values in parsed.items()})
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ServiceError(400, "bad_request", "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise ServiceError(422, "invalid", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ServiceError(422, "invalid", "the body must be a JSON object")
    values = {name: value.strip() for name, value in data.items() if isinstance(value, str)}
    others = frozenset(
        name for name, value in data.items() if value is not None and not isinstance(value, str)
    )
    return Payload(values, others)


async def _multipart(request: Request) -> Payload:
    try:
        form = await request.form()
    except Exception as exc:  # python-multipart raises several types for a malformed body
        raise ServiceError(422, "invalid", f"unreadable multipart body: {exc}") from None
    values: dict[str, str] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                # `curl -F certificate=@cert.pem`: the file's content is the value.
                values[name] = (await value.read()).decode("utf-8").strip()
            else:
                values[name] = value.strip()
    except UnicodeDecodeError:
        raise ServiceError(422, "invalid", "a multipart part is not UTF-8 text") from None
    finally:
        await form.close()
    return Payload(values)


def api_key(request: Request, payload: Payload) -> str:
    key = (request.query_params.get("api_key") or "").strip() or payload.values.get("api_key")
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
        if password.strip() or user.strip():
            return password.strip() or user.strip()
    raise ServiceError(401, "unauthorized", "API key required: api_key=..., a Bearer token or Basic auth")


def required(payload: Payload, name: str) -> str:
    if name in payload.not_strings:
        raise ServiceError(422, "invalid", f"{name} must be a string")
    value = payload.values.get(name)
    if value is None or value == "":
        raise ServiceError(422, "invalid", f"{name} is required")
    return value


def split_keychest_path(domain: str, payload: Payload) -> tuple[str, Payload]:
    """KeyChest's own docs show `servers/expiration/DOMAIN&api_key=KEY` (no `?`): accept that."""
    if "&" in domain:
        domain, _, rest = domain.partition("&")
        extra = {name: values[-1].strip() for name, values in parse_qs(rest).items()}
        payload = Payload({**extra, **payload.values}, payload.not_strings)
    return domain, payload


@dataclass(frozen=True)
class Exchange:
    """One REST request as a route's work sees it: the parsed body, the caller, the service."""

    request: Request
    payload: Payload
    service: Keychest

    @property
    def ip(self) -> str | None:
        return self.request.client.host if self.request.client else None

    def key(self) -> str:
        return api_key(self.request, self.payload)

    def field(self, name: str) -> str:
        """A required value, from the query string or else the body."""
        return (self.request.query_params.get(name) or "").strip() or required(self.payload, name)

    def optional(self, name: str) -> str | None:
        """A value from the query string or the body, None when absent or empty."""
        if name in self.payload.not_strings:
            raise ServiceError(422, "invalid", f"{name} must be a string")
        value = (self.request.query_params.get(name) or "").strip() or self.payload.values.get(name)
        return value or None

    def call(self, fn: Callable[Concatenate[Ctx, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        # Always a write transaction: even a read records the key's last use (keys.use).
        return self.service.from_ip(self.ip).call(fn, *args, **kwargs)


@dataclass
class Gate:
    """The REST request limits of one app: per API key, per client address, and 401s per address."""

    per_key: RateWindow
    per_address: RateWindow
    failed_keys: RateWindow

    @classmethod
    def from_service(cls, service: Keychest) -> Gate:
        limits = service.settings.limits
        return cls(
            RateWindow(limits.rest_requests_per_minute),
            RateWindow(limits.rest_requests_per_minute),
            RateWindow(limits.rest_failed_keys_per_minute),
        )


def _too_many(quota: Quota, text: str) -> JSONResponse:
    response = error_response(429, "rate_limited", text)
    response.headers["Retry-After"] = str(quota.retry_after_s)
    return response


async def respond(request: Request, service: Keychest, gate: Gate, work: Callable[[Exchange], Any]) -> Any:
    """Check the limits, parse the body, run ``work`` in a thread (the database is
    synchronous), and map a ServiceError to the JSON error shape."""
    ip = request.client.host if request.client else "unknown"
    blocked = gate.failed_keys.full(ip)
    if blocked is not None:
        return _too_many(
            blocked, f"too many unknown API keys from your address; retry in {blocked.retry_after_s} s"
        )
    try:
        payload = await read_payload(request)
    except ServiceError as exc:
        return error_response(exc.code, exc.status, exc.text)
    quota = gate.per_address.take(ip)
    if quota.allowed:
        try:
            key: str | None = api_key(request, payload)
        except ServiceError:
            key = None
        if key is not None:
            by_key = gate.per_key.take(hashlib.sha256(key.encode("utf-8", "replace")).hexdigest())
            quota = by_key if not by_key.allowed or by_key.remaining < quota.remaining else quota
    # RateHeaders (middleware) reads it from the same state to write the headers.
    request.scope.setdefault("state", {})[RATE_STATE] = quota
    if not quota.allowed:
        return _too_many(quota, f"over {quota.limit} requests a minute; retry in {quota.retry_after_s} s")
    try:
        return await run_in_threadpool(work, Exchange(request, payload, service))
    except ServiceError as exc:
        if exc.code == 401:
            gate.failed_keys.take(ip)
        return error_response(exc.code, exc.status, exc.text)
