"""The REST API v1.0 routes, in the shape of KeyChest's published API so its scripts work unchanged.

Every answer is JSON with a ``status`` word; errors add ``error`` (a sentence for people) and
use the HTTP code of the service rule that refused (401 unknown key, 404 not yours, 422
invalid input, 429 too many). The API key may come as ``api_key`` in the query or the body
(JSON or form), as a Bearer token, or as the Basic-auth password.

Beyond KeyChest: list, look up and remove servers, list and look up certificates, revoke a
key, and ``certificate/add`` to watch a PEM certificate's expiry without a server.

Each route is one line: :func:`respond` runs a module-level work function on an
:class:`Exchange`; the work functions turn service results into the answer shapes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from keychest.service import certificates, compat, domains, endpoints, scans
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest
from keychest.web.rest import channels as rest_channels
from keychest.web.rest.inputs import Exchange, Gate, required, respond, split_keychest_path
from keychest.web.rest.models import (
    ERRORS,
    KEY_DOC,
    KEY_QUERY,
    AddAnswer,
    CertificateAddAnswer,
    CertificateAnswer,
    CertificatesAnswer,
    ClaimAnswer,
    ExpirationAnswer,
    IndexAnswer,
    LookupAnswer,
    PingAnswer,
    RemoveAnswer,
    RescanAnswer,
    RevokeAnswer,
    ServersAnswer,
    UserAnswer,
    body_schema,
)

PREFIX = "/api/v1.0"
# The documented request of the three calls that name one of the caller's domains.
DOMAIN_BODY = {
    **KEY_QUERY,
    **body_schema({"domain": "name or name:port", "api_key": KEY_DOC}, ["domain"]),
}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def docs_url(request: Request) -> str:
    return _base(request) + "/docs"


# --- answers from service results --------------------------------------------------------------


def _ts(moment: datetime | None) -> int | None:
    return None if moment is None else int((moment - datetime(1970, 1, 1)).total_seconds())


def _server_item(row: endpoints.ServerRow) -> dict[str, Any]:
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


def _claim(claimed: endpoints.Claimed) -> dict[str, str]:
    return {
        "status": claimed.status,
        "user": claimed.email,
        "api_key": claimed.api_key,
        "key_state": claimed.key_state,
    }


def keychest_refusal(exc: ServiceError, word: str, **echo: str | None) -> JSONResponse:
    """An error in KeyChest v1.0's words: its ``status`` word, ours as ``reason``, the text."""
    body = {name: value for name, value in echo.items() if value is not None}
    body.update(status=word, reason=exc.status, error=exc.text)
    return JSONResponse(body, status_code=exc.code)


def _claim_refusal(exc: ServiceError) -> JSONResponse:
    # KeyChest answered a revoked key, a refused claim and a blocked address not-allowed,
    # and its quota too-many.
    words = {403: "not-allowed", 429: "too-many"}
    if exc.code not in words:
        raise exc
    return keychest_refusal(exc, words[exc.code])


# --- what each route does ----------------------------------------------------------------------


def _claim_new(x: Exchange, email: str) -> dict[str, str] | JSONResponse:
    try:
        return _claim(x.call(endpoints.claim_new_key, email.strip()))
    except ServiceError as exc:
        return _claim_refusal(exc)


def _claim_chosen(x: Exchange) -> dict[str, str] | JSONResponse:
    key, email = x.field("api_key"), x.field("email")
    try:
        return _claim(x.call(endpoints.claim_chosen_key, key, email))
    except ServiceError as exc:
        return _claim_refusal(exc)


def _revoke(x: Exchange) -> dict[str, Any]:
    return {"status": "revoked", "key_prefix": x.call(endpoints.revoke_own_key, x.key())}


def _user(x: Exchange) -> dict[str, Any]:
    owner = x.call(endpoints.whoami, x.key())
    return {
        "status": "success",
        "user": owner.email,
        "account_state": owner.account_state,
        "key_prefix": owner.key_prefix,
        "key_state": owner.key_state,
        "domains": owner.domains,
    }


def _add(x: Exchange) -> dict[str, Any] | JSONResponse:
    key = x.key()
    given = x.optional("domain") or ""
    try:
        if not given:
            raise ServiceError(422, "invalid", "domain is required")
        wanted = compat.user_domain(given)
        outcome = x.call(domains.add, key, wanted.text)
    except ServiceError as exc:
        if exc.code != 422:
            raise
        return keychest_refusal(exc, "invalid-domain", domain=given)
    return {
        "status": "success",
        "domain": str(outcome.domain),
        "id": str(outcome.watch_id),
        "key": f"{outcome.domain.host}:{outcome.domain.port}",
        "created": outcome.created,
        "given": given,
        "changes": list(wanted.changes),
    }


def _rescan(x: Exchange) -> dict[str, Any]:
    key = x.key()
    done = x.call(scans.request_rescan, key, x.field("domain"))
    return {
        "status": "success",
        "domain": done.domain,
        "due_utc": _ts(done.due_at),
        "last_scan_utc": _ts(done.last_scan_at),
    }


def _remove(x: Exchange, domain: str | None) -> dict[str, Any]:
    key = x.key()
    name = domain or x.field("domain")
    return {"status": "success", "domain": x.call(endpoints.remove, key, name)}


def _list_servers(x: Exchange, limit: int, offset: int) -> dict[str, Any]:
    rows = x.call(endpoints.list_for_key, x.key())
    return {"status": "success", "servers": [_server_item(r) for r in rows[offset : offset + limit]]}


def _expiration_answer(expiration: endpoints.Expiration) -> dict[str, Any]:
    """KeyChest's servers/expiration shape (models.ExpirationAnswer), with our scanner's verdicts."""
    results = [
        {
            "ip": a.ip,
            "certificate_found": a.not_after is not None,
            "certificate_sha256": a.sha256,
            "renewal_due": a.renewal_due,
            "expired": a.expired,
            "renewal_utc": _ts(a.not_after),
            "last_scan_utc": _ts(a.last_scan_at),
            # Beyond KeyChest: what our scanner concluded about this address.
            "state": a.state,
            "trusted": a.trusted,
            "hostname_ok": a.hostname_ok,
            "error": a.error,
            "problems": [p.code for p in a.problems],
            # As `keychest scan --json` prints them (the scanner's own as_dict); None: unknown.
            "revocation": a.revocation.as_dict() if a.revocation else None,
            "ari": a.ari.as_dict() if a.ari else None,
        }
        for a in expiration.addresses
    ]
    return {
        "status": "success",
        "domain": expiration.domain,
        "certificate_found": any(r["certificate_found"] for r in results),
        "renewal_due": any(r["renewal_due"] for r in results),
        "expired_found": any(r["expired"] for r in results),
        "state": expiration.state,
        "last_scan_utc": _ts(expiration.last_scan_at),
        "results": results,
    }


def _expiration(x: Exchange, domain: str) -> Any:
    name, payload = split_keychest_path(domain, x.payload)
    x = replace(x, payload=payload)
    ip = x.optional("ip")
    request_id = x.optional("request_id") or x.optional("requestId")
    echo = {"domain": name, "ip": ip, "request_id": request_id}
    if request_id is not None and len(request_id) > 64:
        return keychest_refusal(
            ServiceError(422, "invalid", "request_id: at most 64 characters"), "invalid", **echo
        )
    if ip is not None:
        try:
            ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return keychest_refusal(ServiceError(422, "invalid", "ip: not an IP address"), "invalid", **echo)
    key = x.key()
    try:
        answer = x.call(endpoints.expiration, key, name, ip)
    except ServiceError as exc:
        words = {404: "not-registered", 422: "invalid-domain"}
        if exc.code not in words:
            raise
        return keychest_refusal(exc, words[exc.code], **echo)
    echoed = {k: v for k, v in echo.items() if k != "domain" and v is not None}
    return {**_expiration_answer(answer), **echoed}


def _lookup(x: Exchange, domain: str) -> dict[str, Any]:
    row, answer = x.call(endpoints.lookup, x.key(), domain)
    return {"status": "success", "server": _server_item(row), "expiration": _expiration_answer(answer)}


def _list_certificates(x: Exchange) -> dict[str, Any]:
    rows = x.call(certificates.list_for_key, x.key())
    return {"status": "success", "certificates": [_certificate_item(r) for r in rows]}


def _certificate(x: Exchange, sha256: str) -> dict[str, Any]:
    detail = x.call(certificates.detail_for_key, x.key(), sha256)
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


def _certificate_add(x: Exchange) -> dict[str, Any] | JSONResponse:
    key = x.key()
    pem, _ = compat.certificate_pem(required(x.payload, "certificate"))
    try:
        outcome = x.call(certificates.watch_pem, key, pem)
    except certificates.NotOneCertificate as exc:
        return keychest_refusal(exc, "single-cert-expected")
    return {
        # KeyChest answered a second upload 409 already-inserted; it is no error here.
        "status": "success" if outcome.created else "already-inserted",
        "id": str(outcome.id),
        "key": outcome.sha256,
        "sha256": outcome.sha256,
        "subject": outcome.subject,
        "not_after_utc": _ts(outcome.not_after),
        "created": outcome.created,
    }


# --- routes ------------------------------------------------------------------------------------


def build_router(service: Keychest) -> APIRouter:
    router = APIRouter(responses=ERRORS)
    gate = Gate.from_service(service)

    async def answer(request: Request, work: Callable[[Exchange], Any]) -> Any:
        return await respond(request, service, gate, work)

    @router.get(
        PREFIX + "/",
        response_model=IndexAnswer,
        tags=["access"],
        summary="Where the API's documentation is (KeyChest)",
    )
    def index(request: Request) -> dict[str, str]:
        return {
            "status": "success",
            "html_docs": docs_url(request),
            "openapi": str(request.url_for("openapi")),
        }

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
        return await answer(request, lambda x: _claim_new(x, email))

    @router.post(
        PREFIX + "/access/claim",
        response_model=ClaimAnswer,
        tags=["access"],
        summary="Register a client-chosen API key and claim it for an email (KeyChest)",
        openapi_extra=body_schema(
            {"email": "the owner's address", "api_key": "16 to 64 of A-Z a-z 0-9 -"}, ["email", "api_key"]
        ),
    )
    async def claim_chosen(request: Request) -> Any:
        return await answer(request, _claim_chosen)

    @router.get(
        PREFIX + "/access/claim",
        response_model=ClaimAnswer,
        tags=["access"],
        summary="The same as POST, in the query string (KeyChest's api.md example)",
        openapi_extra={
            "parameters": [
                {"name": "email", "in": "query", "required": True, "schema": {"type": "string"}},
                {
                    "name": "api_key",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "16 to 64 of A-Z a-z 0-9 -, chosen by the client",
                },
            ]
        },
    )
    async def claim_chosen_get(request: Request) -> Any:
        return await answer(request, _claim_chosen)

    @router.post(
        PREFIX + "/access/revoke",
        response_model=RevokeAnswer,
        tags=["access"],
        summary="Revoke the calling API key",
        openapi_extra={**KEY_QUERY, **body_schema({"api_key": KEY_DOC}, [])},
    )
    async def revoke(request: Request) -> Any:
        return await answer(request, _revoke)

    @router.get(
        PREFIX + "/user",
        response_model=UserAnswer,
        tags=["access"],
        summary="Who the key belongs to",
        openapi_extra=KEY_QUERY,
    )
    async def user(request: Request) -> Any:
        return await answer(request, _user)

    @router.post(
        PREFIX + "/servers/add",
        response_model=AddAnswer,
        tags=["servers"],
        summary="Watch a domain[:port] (KeyChest)",
        openapi_extra=DOMAIN_BODY,
    )
    async def add(request: Request) -> Any:
        return await answer(request, _add)

    @router.post(
        PREFIX + "/servers/rescan",
        response_model=RescanAnswer,
        tags=["servers"],
        summary="Scan one of the caller's domains now",
        openapi_extra=DOMAIN_BODY,
    )
    async def rescan(request: Request) -> Any:
        return await answer(request, _rescan)

    @router.post(
        PREFIX + "/servers/remove",
        response_model=RemoveAnswer,
        tags=["servers"],
        summary="Stop watching a domain",
        openapi_extra=DOMAIN_BODY,
    )
    async def remove(request: Request) -> Any:
        return await answer(request, lambda x: _remove(x, None))

    @router.delete(
        PREFIX + "/servers/{domain}",
        response_model=RemoveAnswer,
        tags=["servers"],
        summary="Stop watching a domain",
        openapi_extra=KEY_QUERY,
    )
    async def delete_server(domain: str, request: Request) -> Any:
        return await answer(request, lambda x: _remove(x, domain))

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
        return await answer(request, lambda x: _list_servers(x, limit, offset))

    @router.get(
        PREFIX + "/servers/expiration/{domain}",
        response_model=ExpirationAnswer,
        tags=["servers"],
        summary="Certificate expiration per address of one of the caller's domains (KeyChest)",
        openapi_extra={
            "parameters": [
                *KEY_QUERY["parameters"],
                {
                    "name": "ip",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "only this address's record (and summary)",
                },
                {
                    "name": "request_id",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "echoed in the answer (at most 64 characters)",
                },
            ]
        },
        response_model_exclude_unset=True,
    )
    async def expiration(domain: str, request: Request) -> Any:
        return await answer(request, lambda x: _expiration(x, domain))

    @router.get(
        PREFIX + "/servers/lookup/{domain}",
        response_model=LookupAnswer,
        tags=["servers"],
        summary="One of the caller's servers, with its addresses",
        openapi_extra=KEY_QUERY,
    )
    async def lookup(domain: str, request: Request) -> Any:
        return await answer(request, lambda x: _lookup(x, domain))

    @router.get(
        PREFIX + "/certificates",
        response_model=CertificatesAnswer,
        tags=["certificates"],
        summary="Certificates on the caller's servers and those it uploaded",
        openapi_extra=KEY_QUERY,
    )
    async def list_certificates(request: Request) -> Any:
        return await answer(request, _list_certificates)

    @router.get(
        PREFIX + "/certificates/{sha256}",
        response_model=CertificateAnswer,
        tags=["certificates"],
        summary="One certificate by its SHA-256",
        openapi_extra=KEY_QUERY,
    )
    async def certificate(sha256: str, request: Request) -> Any:
        return await answer(request, lambda x: _certificate(x, sha256))

    @router.post(
        PREFIX + "/certificate/add",
        response_model=CertificateAddAnswer,
        tags=["certificates"],
        summary="Watch a certificate's expiry (PEM or base64 DER), without a server (KeyChest)",
        openapi_extra={
            **KEY_QUERY,
            **body_schema(
                {"certificate": "one certificate, PEM or base64 DER", "api_key": KEY_DOC}, ["certificate"]
            ),
        },
    )
    async def certificate_add(request: Request) -> Any:
        return await answer(request, _certificate_add)

    rest_channels.add_routes(router, answer)
    return router
