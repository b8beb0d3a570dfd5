"""What each line API command means: requests to service calls, results to responses.

Answers that need no database come back at once as a Response; the rest are handed to the
write batcher, which calls ``deliver`` with the Response after its commit (or, for a read,
after a read transaction on a reader thread). No coroutine or
future per request: on the hot path of a bash client that opens one connection per request,
every allocation counts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keychest.protocol.line import Request, Response, help_text
from keychest.servers.ratelimit import SlidingWindow
from keychest.service import accounts, domains, keys, renewals, scans
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
    if added.created:
        return Response(200, f"added {added.domain}")
    scheduled = "; scan scheduled" if added.scan_scheduled else ""
    return Response(200, f"already monitored {added.domain}{scheduled}")


def _fact(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _expiration(facts: scans.ExpirationFacts) -> Response:
    """The line API's form of the facts: key=value words in field order, absent ones left out."""
    text = "not scanned yet" if facts.state == scans.PENDING else "scanned"
    words = [
        f"{field.name}={_fact(value)}"
        for field in dataclasses.fields(facts)
        if (value := getattr(facts, field.name)) is not None and value != ()
    ]
    return Response(200, text, data=" ".join(words))


def _renewal(reported: renewals.Reported) -> Response:
    scheduled = "; scan scheduled" if reported.scan_scheduled else ""
    return Response(200, f"renewal {reported.status} recorded for {reported.domain}{scheduled}")


# The calls that reach the database (writes, and the reads in READS): the service function,
# the request keys it takes in order (a trailing "?" marks an optional one: None when absent),
# and the answer.
CALLS: dict[str, tuple[Callable[..., Any], tuple[str, ...], Callable[[Any], Response]]] = {
    "apikey": (keys.create, (), _issued),
    "claim": (accounts.claim, ("apikey", "email"), _claimed),
    "add": (domains.add, ("apikey", "domain"), _added),
    "expiration": (renewals.expiration_facts, ("apikey", "domain"), _expiration),
    "renewal": (renewals.report, ("apikey", "domain", "status", "sha256?", "host?"), _renewal),
}

# Answered from a read connection (WriteBatcher's readers), not through the writer's commits.
READS = frozenset({"expiration"})

# A line API user who meets 401 is told how to get a key (REST keeps the bare text).
UNKNOWN_KEY_HINT = "get one with: command apikey"


def result_response(result: object, finish: Callable[[Any], Response]) -> Response:
    """Turn what the writer returned for one call into the response the client gets."""
    if isinstance(result, ServiceError):
        if result.code == 401:
            return Response(401, f"{result.text}; {UNKNOWN_KEY_HINT}")
        return Response(result.code, result.text)
    if isinstance(result, BaseException):
        # Not a refusal by the rules: a bug the writer already logged. Nothing was committed.
        return Response(500, "internal error; nothing was changed")
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
        if cmd == "apikey" and ip is not None and not self._apikey_burst.allow(ip, time.monotonic()):
            return Response(429, "too many new API keys from your address; slow down")
        # parse_request admits only the commands of protocol.line.COMMANDS: the rest are CALLS.
        fn, names, finish = CALLS[cmd]
        args = tuple(
            request.args.get(name[:-1]) if name.endswith("?") else request.get(name) for name in names
        )
        self.submit(Call(fn, args, ip, read=cmd in READS), finish, deliver)
        return None
