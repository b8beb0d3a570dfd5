"""The REST API v1.0, in the shape of KeyChest's published API so its scripts work unchanged.

Every answer is JSON with a ``status`` word; errors add ``error`` (a sentence for people) and
use the HTTP code of the service rule that refused (401 unknown key, 404 not yours, 422
invalid input, 429 too many). The API key may come as ``api_key`` in the query or the body
(JSON or form), as a Bearer token, or as the Basic-auth password.

Beyond KeyChest: list, look up and remove servers, list and look up certificates, revoke a
key, and ``certificate/add`` to watch a PEM certificate's expiry without a server.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from keychest.service import certificates, domains, servers
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest

PREFIX = "/api/v1.0"
MAX_BODY = 128 * 1024


# --- answer shapes (they are the OpenAPI schema too) -------------------------------------------


class ErrorAnswer(BaseModel):
    status: str = Field(
        description="stable word for scripts: unauthorized, forbidden, not_found, invalid, ..."
    )
    error: str = Field(description="what went wrong, for people")


class PingAnswer(BaseModel):
    status: str


class ClaimAnswer(BaseModel):
    status: str = Field(description="created (a new key or a new claim) or success (already yours)")
    user: str
    api_key: str
    key_state: str = Field(description="active, or pending until the account's owner approves the key")


class UserAnswer(BaseModel):
    status: str
    user: str | None = Field(description="the email the key is claimed for; null while unclaimed")
    account_state: str | None
    key_prefix: str
    key_state: str
    domains: int


class RevokeAnswer(BaseModel):
    status: str
    key_prefix: str


class AddAnswer(BaseModel):
    status: str
    domain: str
    id: str = Field(description="the registration's id")
    key: str = Field(description="the endpoint watched, host:port")
    created: bool = Field(description="false when the domain was already registered (adding is idempotent)")


class RemoveAnswer(BaseModel):
    status: str
    domain: str


class AddressResult(BaseModel):
    ip: str | None
    certificate_found: bool
    certificate_sha256: str | None
    renewal_due: bool | None
    expired: bool | None
    renewal_utc: int | None = Field(description="the certificate's not-after, Unix time")
    last_scan_utc: int | None = Field(description="Unix time")
    state: str
    trusted: bool | None
    hostname_ok: bool | None
    error: str | None
    problems: list[str]


class ExpirationAnswer(BaseModel):
    status: str
    domain: str
    certificate_found: bool
    renewal_due: bool = Field(description="a certificate expires within 28 days")
    expired_found: bool
    state: str
    last_scan_utc: int | None
    results: list[AddressResult]


class ServerItem(BaseModel):
    id: int
    domain: str
    host: str
    port: int
    state: str
    addresses: int
    earliest_expiry_utc: int | None
    last_scan_utc: int | None
    added_utc: int | None


class ServersAnswer(BaseModel):
    status: str
    servers: list[ServerItem]


class LookupAnswer(BaseModel):
    status: str
    server: ServerItem
    expiration: ExpirationAnswer


class CertificateItem(BaseModel):
    sha256: str
    subject: str
    issuer: str
    not_before_utc: int
    not_after_utc: int
    subject_alt_names: list[str]
    watched: bool = Field(description="uploaded with certificate/add (rather than seen on a server)")


class CertificatesAnswer(BaseModel):
    status: str
    certificates: list[CertificateItem]


class DeploymentItem(BaseModel):
    domain: str
    ip: str
    state: str
    since_utc: int
    last_scan_utc: int


class CertificateAnswer(BaseModel):
    status: str
    certificate: CertificateItem
    key_type: str
    key_bits: int
    signature_algorithm: str
    self_signed: bool
    chain: list[str] = Field(description="sha256 of each certificate as last served, leaf first")
    deployments: list[DeploymentItem]
    pem: str


class CertificateAddAnswer(BaseModel):
    status: str
    id: str
    sha256: str
    subject: str
    not_after_utc: int
    created: bool


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorAnswer, "description": text}
    for code, text in {
        400: "malformed request",
        401: "missing or unknown API key",
        403: "revoked key, a key claimed by another address, or a quota",
        404: "not found, or not the caller's",
        422: "invalid input",
        429: "too many requests",
    }.items()
}


def _body_schema(fields: dict[str, str], required: list[str]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {name: {"type": "string", "description": text} for name, text in fields.items()},
        "required": required,
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }


KEY_DOC = "the API key (or give it as ?api_key=, a Bearer token or the Basic-auth password)"
KEY_QUERY = {
    "parameters": [
        {
            "name": "api_key",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": KEY_DOC,
        }
    ]
}


# --- plumbing ----------------------------------------------------------------------------------


def _ts(moment: datetime | None) -> int | None:
    return None if moment is None else int((moment - datetime(1970, 1, 1)).total_seconds())


def _error(code: int, status: str, text: str) -> JSONResponse:
    return JSONResponse({"status": status, "error": text}, status_code=code)


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _payload(request: Request) -> dict[str, str]:
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


def _api_key(request: Request, payload: dict[str, str]) -> str:
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


def _required(payload: dict[str, str], name: str) -> str:
    value = payload.get(name)
    if value is None or value == "":
        raise ServiceError(422, "invalid", f"{name} is required")
    return value


def _split_keychest_path(
    domain: str, request: Request, payload: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """KeyChest's own docs show `servers/expiration/DOMAIN&api_key=KEY` (no `?`): accept that."""
    if "&" in domain:
        domain, _, rest = domain.partition("&")
        extra = {name: values[-1] for name, values in parse_qs(rest).items()}
        payload = {**extra, **payload}
    return domain, payload


def _server_item(row: servers.ServerRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "domain": row.domain,
        "host": row.host,
        "port": row.port,
        "state": row.state,
        "addresses": row.addresses,
        "earliest_expiry_utc": _ts(row.earliest_not_after),
        "last_scan_utc": _ts(row.last_scan_at),
        "added_utc": _ts(row.added_at),
    }


def _certificate_item(row: certificates.CertRow) -> dict[str, Any]:
    return {
        "sha256": row.sha256,
        "subject": row.subject,
        "issuer": row.issuer,
        "not_before_utc": _ts(row.not_before),
        "not_after_utc": _ts(row.not_after),
        "subject_alt_names": row.subject_alt_names,
        "watched": row.watched,
    }


# --- routes ------------------------------------------------------------------------------------


def build_router(service: Keychest) -> APIRouter:
    router = APIRouter(responses=ERRORS)

    async def run(request: Request, work: Callable[[dict[str, str]], Any]) -> Any:
        """Parse the body, run ``work`` in a thread (the database is synchronous), map errors."""
        try:
            payload = await _payload(request)
            return await run_in_threadpool(work, payload)
        except ServiceError as exc:
            return _error(exc.code, exc.status, exc.text)

    def db(fn: Callable[..., Any], *args: Any, ip: str | None) -> Any:
        # Always a write transaction: even a read records the key's last use (keys.use).
        return service.call(fn, *args, ip=ip)

    @router.get("/api/ping", response_model=PingAnswer, tags=["access"], summary="Is the server up?")
    def ping() -> dict[str, str]:
        return {"status": "success"}

    @router.get(
        PREFIX + "/access/claim/{email}",
        response_model=ClaimAnswer,
        tags=["access"],
        summary="A new API key, claimed for an email (KeyChest)",
    )
    async def claim_new(email: str, request: Request) -> Any:
        ip = _ip(request)
        return await run(request, lambda p: _claim(db(servers.claim_new_key, email, ip=ip)))

    @router.post(
        PREFIX + "/access/claim",
        response_model=ClaimAnswer,
        tags=["access"],
        summary="Register a client-chosen API key and claim it for an email (KeyChest)",
        openapi_extra=_body_schema(
            {"email": "the owner's address", "api_key": "16 to 64 of A-Z a-z 0-9 -"}, ["email", "api_key"]
        ),
    )
    async def claim_chosen(request: Request) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            key = request.query_params.get("api_key") or _required(p, "api_key")
            email = request.query_params.get("email") or _required(p, "email")
            return _claim(db(servers.claim_chosen_key, key, email, ip=ip))

        return await run(request, work)

    @router.post(
        PREFIX + "/access/revoke",
        response_model=RevokeAnswer,
        tags=["access"],
        summary="Revoke the calling API key",
        openapi_extra={**KEY_QUERY, **_body_schema({"api_key": KEY_DOC}, [])},
    )
    async def revoke(request: Request) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            prefix = db(servers.revoke_own_key, _api_key(request, p), ip=ip)
            return {"status": "revoked", "key_prefix": prefix}

        return await run(request, work)

    @router.get(
        PREFIX + "/user",
        response_model=UserAnswer,
        tags=["access"],
        summary="Who the key belongs to",
        openapi_extra=KEY_QUERY,
    )
    async def user(request: Request) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            owner = db(servers.whoami, _api_key(request, p), ip=ip)
            return {
                "status": "success",
                "user": owner.email,
                "account_state": owner.account_state,
                "key_prefix": owner.key_prefix,
                "key_state": owner.key_state,
                "domains": owner.domains,
            }

        return await run(request, work)

    @router.post(
        PREFIX + "/servers/add",
        response_model=AddAnswer,
        tags=["servers"],
        summary="Watch a domain[:port] (KeyChest)",
        openapi_extra={
            **KEY_QUERY,
            **_body_schema({"domain": "name or name:port", "api_key": KEY_DOC}, ["domain"]),
        },
    )
    async def add(request: Request) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            key = _api_key(request, p)
            domain = request.query_params.get("domain") or _required(p, "domain")
            outcome = db(domains.add, key, domain, ip=ip)
            return {
                "status": "success",
                "domain": str(outcome.domain),
                "id": str(outcome.watch_id),
                "key": f"{outcome.domain.host}:{outcome.domain.port}",
                "created": outcome.created,
            }

        return await run(request, work)

    async def _remove(request: Request, domain: str | None) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            key = _api_key(request, p)
            name = domain or request.query_params.get("domain") or _required(p, "domain")
            return {"status": "success", "domain": db(servers.remove, key, name, ip=ip)}

        return await run(request, work)

    @router.post(
        PREFIX + "/servers/remove",
        response_model=RemoveAnswer,
        tags=["servers"],
        summary="Stop watching a domain",
        openapi_extra={
            **KEY_QUERY,
            **_body_schema({"domain": "name or name:port", "api_key": KEY_DOC}, ["domain"]),
        },
    )
    async def remove(request: Request) -> Any:
        return await _remove(request, None)

    @router.delete(
        PREFIX + "/servers/{domain}",
        response_model=RemoveAnswer,
        tags=["servers"],
        summary="Stop watching a domain",
        openapi_extra=KEY_QUERY,
    )
    async def delete_server(domain: str, request: Request) -> Any:
        return await _remove(request, domain)

    @router.get(
        PREFIX + "/servers",
        response_model=ServersAnswer,
        tags=["servers"],
        summary="The caller's servers",
        openapi_extra=KEY_QUERY,
    )
    async def list_servers(
        request: Request,
        limit: int = Query(1000, ge=1, le=10000, description="at most this many"),
        offset: int = Query(0, ge=0, description="skip this many (sorted by domain)"),
    ) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            rows = db(servers.list_for_key, _api_key(request, p), ip=ip)
            return {"status": "success", "servers": [_server_item(r) for r in rows[offset : offset + limit]]}

        return await run(request, work)

    @router.get(
        PREFIX + "/servers/expiration/{domain}",
        response_model=ExpirationAnswer,
        tags=["servers"],
        summary="Certificate expiration per address of one of the caller's domains (KeyChest)",
        openapi_extra=KEY_QUERY,
    )
    async def expiration(domain: str, request: Request) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            name, p = _split_keychest_path(domain, request, p)
            return db(servers.expiration, _api_key(request, p), name, ip=ip)

        return await run(request, work)

    @router.get(
        PREFIX + "/servers/lookup/{domain}",
        response_model=LookupAnswer,
        tags=["servers"],
        summary="One of the caller's servers, with its addresses",
        openapi_extra=KEY_QUERY,
    )
    async def lookup(domain: str, request: Request) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            key = _api_key(request, p)

            def both(ctx):  # type: ignore[no-untyped-def]
                answer = servers.expiration(ctx, key, domain)
                endpoint = servers.owned_endpoint(ctx, key, domain)
                row = next(r for r in servers.list_for_key(ctx, key) if r.id == endpoint.id)
                return row, answer

            row, answer = db(both, ip=ip)
            return {"status": "success", "server": _server_item(row), "expiration": answer}

        return await run(request, work)

    @router.get(
        PREFIX + "/certificates",
        response_model=CertificatesAnswer,
        tags=["certificates"],
        summary="Certificates on the caller's servers and those it uploaded",
        openapi_extra=KEY_QUERY,
    )
    async def list_certificates(request: Request) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            rows = db(certificates.list_for_key, _api_key(request, p), ip=ip)
            return {"status": "success", "certificates": [_certificate_item(r) for r in rows]}

        return await run(request, work)

    @router.get(
        PREFIX + "/certificates/{sha256}",
        response_model=CertificateAnswer,
        tags=["certificates"],
        summary="One certificate by its SHA-256",
        openapi_extra=KEY_QUERY,
    )
    async def certificate(sha256: str, request: Request) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            detail = db(certificates.detail_for_key, _api_key(request, p), sha256, ip=ip)
            cert = detail.certificate
            item = certificates.CertRow(
                cert.sha256,
                cert.subject,
                cert.issuer_name,
                cert.not_before,
                cert.not_after,
                list(cert.subject_alt_names or []),
                detail.watched,
            )
            return {
                "status": "success",
                "certificate": _certificate_item(item),
                "key_type": cert.key_type,
                "key_bits": cert.key_bits,
                "signature_algorithm": cert.signature_algorithm,
                "self_signed": cert.self_signed,
                "chain": [c if isinstance(c, str) else c.sha256 for c in detail.chain],
                "deployments": [
                    {
                        "domain": d.domain,
                        "ip": d.ip,
                        "state": d.state,
                        "since_utc": _ts(d.since),
                        "last_scan_utc": _ts(d.last_scan_at),
                    }
                    for d in detail.deployments
                ],
                "pem": cert.pem,
            }

        return await run(request, work)

    @router.post(
        PREFIX + "/certificate/add",
        response_model=CertificateAddAnswer,
        tags=["certificates"],
        summary="Watch a PEM certificate's expiry, without a server (KeyChest)",
        openapi_extra={
            **KEY_QUERY,
            **_body_schema({"certificate": "one certificate in PEM", "api_key": KEY_DOC}, ["certificate"]),
        },
    )
    async def certificate_add(request: Request) -> Any:
        ip = _ip(request)

        def work(p: dict[str, str]) -> Any:
            key = _api_key(request, p)
            outcome = db(certificates.watch_pem, key, _required(p, "certificate"), ip=ip)
            return {
                "status": "success",
                "id": str(outcome.id),
                "sha256": outcome.sha256,
                "subject": outcome.subject,
                "not_after_utc": _ts(outcome.not_after),
                "created": outcome.created,
            }

        return await run(request, work)

    return router


def _claim(claimed: servers.Claimed) -> dict[str, str]:
    return {
        "status": claimed.status,
        "user": claimed.email,
        "api_key": claimed.api_key,
        "key_state": claimed.key_state,
    }


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


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
        if str(scope.get("path", "")).startswith("/api/"):
            response: Any = _error(413, "too_large", text)
        else:
            from fastapi.responses import PlainTextResponse

            response = PlainTextResponse(text, status_code=413)
        await response(scope, _no_receive, send)


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}


def install(app: FastAPI, service: Keychest) -> None:
    app.include_router(build_router(service))
    app.add_middleware(BodyLimit, limit=MAX_BODY)

    # FastAPI's own errors (a missing path part, a 404 route, a wrong method) in the same
    # JSON shape as ours under /api/; other paths keep FastAPI's defaults.
    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        if not _is_api(request):
            return await request_validation_exception_handler(request, exc)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        text = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid input"))
        return _error(422, "invalid", text)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if not _is_api(request):
            return await http_exception_handler(request, exc)
        words = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        response = _error(exc.status_code, words.get(exc.status_code, "error"), str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response
