"""Standard Webhooks signatures (https://www.standardwebhooks.com/), pure: no I/O.

A receiver checks ``webhook-signature`` against HMAC-SHA256 over ``"{id}.{timestamp}.{body}"``
with the secret's bytes; the secret is handed around as ``whsec_`` + base64 of those bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
SECRET_BYTES = 32


class SecretError(ValueError):
    """A webhook secret that is not ``whsec_<base64>`` (the message says what is wrong)."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    text = secret.strip()
    if not text.startswith(PREFIX):
        raise SecretError("a webhook secret starts with whsec_ (whsec_ followed by base64)")
    try:
        raw = base64.b64decode(text[len(PREFIX) :], validate=True)
    except ValueError:
        raise SecretError("the part after whsec_ is not base64") from None
    if len(raw) < 16:
        raise SecretError("a webhook secret needs at least 16 bytes (24 base64 characters)")
    return raw


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str | None, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one delivery; unsigned (no ``webhook-signature``) without a secret."""
    out = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
    }
    if secret is not None:
        out["webhook-signature"] = signature(secret, msg_id, timestamp, body)
    return out


def redact(secret: str) -> str:
    """What may be shown of a secret: its prefix and last four characters."""
    return f"{PREFIX}...{secret.strip()[-4:]}"
