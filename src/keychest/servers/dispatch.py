"""What each line API command means: requests to service calls, results to responses.

Answers that need no database come back at once as a Response; the rest are handed to the
write batcher, which calls ``deliver`` with the Response after its commit. No coroutine or
future per request: on the hot path of a bash client that opens one connection per request,
every allocation counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keychest.protocol.line import Request, Response, help_text
from keychest.servers.ratelimit import SlidingWindow
from keychest.service import accounts, domains, keys, scans
from keychest.service.errors import ServiceError
from keychest.service.facade import Call, Keychest

log = logging.getLogger("keychest.line")

# A new address and one that already has an account get the same answer: the line API must
# not tell a stranger whether an address is a customer. The mail says which it was.
CLAIMED_BY_MAIL = "claimed; the owner of that address confirms by mail"
CLAIM_TEXT = {
    "created": CLAIMED_BY_MAIL,
    "pending": CLAIMED_BY_MAIL,
    "already": "already claimed by this address",
    "placeholder": "claimed with a placeholder address; claim again with a real one to get mail",
}

Deliver = Callable[[Response], None]
# Submits a call to the writer, which later calls deliver(finish(result)) (or an error answer).
Submit = Callable[[Call, Callable[[Any], Response], Deliver], None]


def _issued(issued: keys.IssuedKey) -> Response:
    return Response(200, "new API key; keep it", data=issued.key)


def _claimed(outcome: accounts.ClaimOutcome) -> Response:
    return Response(200, CLAIM_TEXT[outcome.outcome])


def _added(added: domains.AddOutcome) -> Response:
    return Response(200, f"{'added' if added.created else 'already monitored'} {added.domain}")


def _expiration(facts: dict[str, str]) -> Response:
    text = "not scanned yet" if facts["state"] == "pending" else "scanned"
    return Response(200, text, data=" ".join(f"{k}={v}" for k, v in facts.items()))


def result_response(result: object, finish: Callable[[Any], Response]) -> Response:
    """Turn what the writer returned for one call into the response the client gets."""
    if isinstance(result, ServiceError):
        return Response(result.code, result.text)
    if isinstance(result, BaseException):
        from sqlalchemy.exc import OperationalError

        log.error("write failed: %r", result)
        code = 503 if isinstance(result, OperationalError) else 500
        return Response(code, "storage unavailable; nothing was changed, retry")
    try:
        return finish(result)
    except Exception:
        log.exception("formatting a result failed")
        return Response(500, "internal error")


@dataclass
class Dispatcher:
    service: Keychest
    submit: Submit

    def __post_init__(self) -> None:
        limits = self.service.settings.limits
        self._apikey_burst = SlidingWindow(limits.apikey_burst_per_ip, limits.apikey_burst_window_s)

    def handle(self, request: Request, ip: str | None, deliver: Deliver) -> Response | None:
        """The answer now, or None when it will come through ``deliver`` after a commit."""
        cmd = request.command
        if cmd == "ping":
            return Response(200, "pong")
        if cmd == "help":
            return Response(200, help_text())
        if cmd == "maildomain":
            return Response(200, "placeholder mail domain", data=self.service.settings.mail_domain)
        if cmd == "apikey":
            if ip is not None and not self._apikey_burst.allow(ip, time.monotonic()):
                return Response(429, "too many new API keys from your address; slow down")
            call = Call(keys.create, (), ip)
            finish = _issued
        elif cmd == "claim":
            call = Call(accounts.claim, (request.get("apikey"), request.get("email")), ip)
            finish = _claimed
        elif cmd == "add":
            call = Call(domains.add, (request.get("apikey"), request.get("domain")), ip)
            finish = _added
        elif cmd == "expiration":
            call = Call(scans.expiration_facts, (request.get("apikey"), request.get("domain")), ip)
            finish = _expiration
        else:
            return Response(404, "unknown command")
        self.submit(call, finish, deliver)
        return None
