"""Signed-cookie sessions for the dashboard: no passwords, signed in by mailed links.

The cookie holds only the account id, the account's session version and a timestamp, signed
with the installation's secret (service.secrets), HttpOnly and SameSite=Lax. CSRF tokens for
forms derive from it. The version is checked against the database on every request: bumping
it (sign-out, which signs out everywhere, a block, a key revoked) ends every cookie at once.
"""

from __future__ import annotations

import hashlib
import hmac
import weakref

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from keychest.service import accounts, secrets
from keychest.service.facade import Keychest

COOKIE = "keychest_session"
MAX_AGE_S = 30 * 86400


# One per service (the secret is read once): an app serves one service for its whole life.
_SERIALIZERS: weakref.WeakKeyDictionary[Keychest, URLSafeTimedSerializer] = weakref.WeakKeyDictionary()


def _serializer(service: Keychest) -> URLSafeTimedSerializer:
    cached = _SERIALIZERS.get(service)
    if cached is None:
        secret = service.call(secrets.get_or_create, "session")
        cached = _SERIALIZERS[service] = URLSafeTimedSerializer(secret, salt="keychest-session")
    return cached


def sign_in(service: Keychest, response: Response, account_id: int, *, secure: bool = False) -> None:
    version = service.read(accounts.session_version, account_id)
    if version is None:
        return  # a blocked account gets no session
    token = _serializer(service).dumps({"account": account_id, "v": version})
    response.set_cookie(
        COOKIE, token, max_age=MAX_AGE_S, httponly=True, samesite="lax", secure=secure, path="/"
    )


def sign_out(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/")


def end_all(service: Keychest, account_id: int, *, ip: str | None) -> None:
    """Sign the account out everywhere: every cookie signed so far stops working."""
    service.from_ip(ip).call(accounts.end_sessions, account_id)


def current_account_id(service: Keychest, request: Request) -> int | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        data = _serializer(service).loads(token, max_age=MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    account, version = data.get("account"), data.get("v")
    if not isinstance(account, int) or not isinstance(version, int):
        return None  # cookies from before session versions count as signed out
    if service.read(accounts.session_version, account) != version:
        return None
    return account


def csrf_token(service: Keychest, request: Request) -> str:
    """A per-session token for forms: an attacker's page cannot read the cookie to make it."""
    cookie = request.cookies.get(COOKIE, "")
    secret = _serializer(service).secret_key
    key = secret if isinstance(secret, bytes) else str(secret).encode()
    return hmac.new(key, b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()[:32]


def csrf_ok(service: Keychest, request: Request, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(csrf_token(service, request), submitted or "")
