"""What each line API command means: requests to service calls, results to responses."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from keychest.protocol.line import Request, Response, help_text
from keychest.servers.ratelimit import SlidingWindow
from keychest.service import accounts, domains, keys, scans
from keychest.service.errors import ServiceError
from keychest.service.facade import Call, Keychest

log = logging.getLogger("keychest.line")

CLAIM_TEXT = {
    "created": "claimed; a confirmation mail is on its way",
    "pending": "claimed; the account's owner must approve this key",
    "already": "already claimed by this address",
    "placeholder": "claimed with a placeholder address; claim again with a real one to get mail",
}


@dataclass
class Dispatcher:
    service: Keychest
    submit_write: Callable[[Call], Awaitable[object]]

    def __post_init__(self) -> None:
        limits = self.service.settings.limits
        self._apikey_burst = SlidingWindow(limits.apikey_burst_per_ip, limits.apikey_burst_window_s)

    async def handle(self, request: Request, ip: str | None) -> Response:
        try:
            return await self._handle(request, ip)
        except ServiceError as exc:
            return Response(exc.code, exc.text)
        except Exception:
            log.exception("request %s failed", request.command)
            return Response(500, "internal error; nothing was changed")

    async def _handle(self, request: Request, ip: str | None) -> Response:
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
            issued = await self._write(keys.create, (), ip)
            return Response(200, "new API key; keep it", data=issued.key)
        if cmd == "claim":
            outcome = await self._write(accounts.claim, (request.get("apikey"), request.get("email")), ip)
            return Response(200, CLAIM_TEXT[outcome.outcome])
        if cmd == "add":
            added = await self._write(domains.add, (request.get("apikey"), request.get("domain")), ip)
            word = "added" if added.created else "already monitored"
            return Response(200, f"{word} {added.domain}")
        if cmd == "expiration":
            facts = await self._write(
                scans.expiration_facts, (request.get("apikey"), request.get("domain")), ip
            )
            text = "not scanned yet" if facts["state"] == "pending" else "scanned"
            return Response(200, text, data=" ".join(f"{k}={v}" for k, v in facts.items()))
        return Response(404, "unknown command")

    async def _write(self, fn: Callable[..., object], args: tuple[object, ...], ip: str | None):  # type: ignore[no-untyped-def]
        result = await self.submit_write(Call(fn, args, ip))
        if isinstance(result, ServiceError):
            raise result
        if isinstance(result, BaseException):
            log.error("write failed: %r", result)
            return_code = 503 if _is_unavailable(result) else 500
            raise ServiceError(return_code, "error", "storage unavailable; nothing was changed, retry")
        return result


def _is_unavailable(exc: BaseException) -> bool:
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError)
