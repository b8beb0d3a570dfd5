"""The REST API's answer shapes: the JSON every route returns, and the OpenAPI schema too."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class ErrorAnswer(BaseModel):
    status: str = Field(
        description="stable word for scripts: unauthorized, forbidden, not_found, invalid, ..."
    )
    error: str = Field(description="what went wrong, for people")
    reason: str | None = Field(
        None,
        description="our word (as in status elsewhere) when status carries KeyChest v1.0's word "
        "(not-registered, invalid-domain, single-cert-expected, not-allowed, too-many)",
    )


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
    given: str = Field(description="the domain as sent")
    changes: list[str] = Field(
        description="what was done to it (a URL's scheme and path dropped, a wildcard's *. removed)"
    )


class RemoveAnswer(BaseModel):
    status: str
    domain: str


class RevocationAnswer(BaseModel):
    """The last scan's revocation answer, as ``keychest scan --json`` prints it."""

    status: str = Field(description="good, revoked or unknown")
    method: str | None = Field(description="crl, ocsp or stapled; null when no answer came")
    revoked_at: str | None = Field(description="ISO 8601 UTC, when revoked")
    reason: str | None = Field(description="the CRL's or OCSP responder's reason, when revoked")
    error: str | None = Field(description="why the status is unknown")


class AriAnswer(BaseModel):
    """The CA's suggested renewal window (ACME Renewal Information, RFC 9773), as ``scan --json``."""

    window_start: str = Field(description="ISO 8601 UTC")
    window_end: str = Field(description="ISO 8601 UTC")
    explanation_url: str | None
    checked_at: str = Field(description="ISO 8601 UTC, when the CA was asked")


class AddressExpiration(BaseModel):
    """One address's record in servers/expiration."""

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
    revocation: RevocationAnswer | None = Field(
        None, description="the last scan's revocation check; null when not checked or the scan failed"
    )
    ari: AriAnswer | None = Field(
        None, description="the CA's suggested renewal window; null when the CA offers none or did not answer"
    )


class ExpirationAnswer(BaseModel):
    status: str
    domain: str
    ip: str | None = Field(None, description="the ip= asked for (only then): results are that address's")
    request_id: str | None = Field(None, description="the request_id sent, echoed (only then)")
    certificate_found: bool
    renewal_due: bool = Field(description="a certificate expires within 28 days")
    expired_found: bool
    state: str
    last_scan_utc: int | None
    results: list[AddressExpiration]


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
    status: str = Field(description="success, or already-inserted when the key watched it already")
    id: str
    key: str = Field(description="the certificate's SHA-256, as KeyChest's key of the watched object")
    sha256: str
    subject: str
    not_after_utc: int
    created: bool


class RescanAnswer(BaseModel):
    status: str
    domain: str
    due_utc: int = Field(description="when the scan is due (now): a running scanner starts it within seconds")
    last_scan_utc: int | None


class IndexAnswer(BaseModel):
    status: str
    html_docs: str = Field(description="the API's documentation for people")
    openapi: str = Field(description="the OpenAPI schema")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorAnswer, "description": text}
    for code, text in {
        400: "malformed request",
        401: "missing or unknown API key",
        403: "revoked key, a key claimed by another address, or a quota",
        404: "not found, or not the caller's",
        422: "invalid input",
        413: "request body over 128 KiB",
        429: "too many requests",
        503: "the database is unavailable; retry",
    }.items()
}


def body_schema(fields: dict[str, str], required: list[str]) -> dict[str, Any]:
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


def error_response(code: int, status: str, text: str) -> JSONResponse:
    """The one error shape of every /api/ answer: ``{"status": WORD, "error": TEXT}``."""
    return JSONResponse({"status": status, "error": text}, status_code=code)
