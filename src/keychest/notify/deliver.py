"""The channel adapter: deliver one notification to an Apprise URL or a native signed webhook.

I/O lives here (DNS, HTTP, Apprise); what is sent is decided and built elsewhere
(notify.events, notify.payload, notify.signing). Every delivery is bounded by one time-out, so
a dead or slow receiver costs its own channel that long and nothing else.

The private-address guard of the scanner (scan.guard) applies to every host a channel names:
a channel must not become a way into the internal network. The address is checked right
before each delivery; the HTTP client then connects by name, which leaves the usual
resolve-twice window that only a DNS server under the attacker's control can use.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from keychest.notify import payload, signing
from keychest.scan.guard import ALLOW_FLAG, check_address

APPRISE = "apprise"
WEBHOOK = "webhook"
# Apprise schemes whose host part is a server the URL's owner chose (not a service's API).
HOSTED_SCHEMES = frozenset(
    {
        "json",
        "jsons",
        "form",
        "forms",
        "xml",
        "xmls",
        "gotify",
        "gotifys",
        "matrix",
        "matrixs",
        "apprise",
        "apprises",
    }
)
ANSWER_CHARS = 300
_STATUS = re.compile(r"\b(4\d\d)\b")


class ChannelUrlError(ValueError):
    """A channel URL refused at the time it is set (the message names the problem)."""


@dataclass(frozen=True)
class Target:
    kind: str  # apprise, webhook
    url: str
    secret: str | None = None  # whsec_...: webhooks only


@dataclass(frozen=True)
class Outcome:
    ok: bool
    answer: str  # the receiver's status and the start of its answer, or what went wrong
    # The receiver answered 4xx: it refuses this request and will refuse it again.
    refused: bool = False


def kind_of(url: str) -> str:
    """`notify test URL`: an http(s) URL is a native webhook, anything else an Apprise URL."""
    return WEBHOOK if urlsplit(url).scheme.lower() in ("http", "https") else APPRISE


def check_url(target: Target) -> None:
    """Refuse what can never work, naming the problem (REST answers it as 422)."""
    url = target.url.strip()
    if not url or any(c in url for c in "\r\n\t "):
        raise ChannelUrlError("the URL is empty or contains white space")
    if target.kind == WEBHOOK:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise ChannelUrlError(
                f"a webhook URL must be http:// or https://, not {parts.scheme or 'no'} scheme"
            )
        if not parts.hostname:
            raise ChannelUrlError("the webhook URL has no host")
        if target.secret is not None:
            try:
                signing.secret_bytes(target.secret)
            except signing.SecretError as exc:
                raise ChannelUrlError(str(exc)) from None
        return
    if target.kind != APPRISE:
        raise ChannelUrlError(f"unknown channel kind {target.kind!r}")
    import apprise  # imported when used: the CLI's other commands should not pay for it

    if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
        scheme = urlsplit(url).scheme or "(none)"
        raise ChannelUrlError(f"not a valid Apprise URL: unknown service {scheme}:// or bad parameters")


def _looks_like_host(name: str) -> bool:
    """A server name or address, not a service token (slack://T1234/..., tgram://123456:...)."""
    return "." in name or ":" in name or name.lower() == "localhost"


def guarded_hosts(target: Target) -> list[str]:
    """Every host this channel would connect to that the URL's owner chose: the webhook's,
    a hosted Apprise service's (json://, gotify://, ntfy://host, ...), an SMTP server's."""
    parts = urlsplit(target.url)
    if target.kind == WEBHOOK:
        return [parts.hostname] if parts.hostname else []
    found = [parts.hostname or ""] if parts.scheme.lower() in HOSTED_SCHEMES else []
    import apprise

    plugin = apprise.Apprise.instantiate(target.url, suppress_exceptions=True)
    for attribute in ("host", "smtp_host"):
        value = getattr(plugin, attribute, None)
        if isinstance(value, str):
            found.append(value)
    return sorted({h.strip("[]") for h in found if h and _looks_like_host(h)})


class ResolveError(ChannelUrlError):
    """The host did not resolve: refused when set, retried when delivering."""


def check_private(target: Target, allow_private_targets: bool) -> None:
    """Resolve the channel's hosts and refuse any with an address that is not public (blocking: DNS)."""
    if allow_private_targets:
        return
    for host in guarded_hosts(target):
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise ResolveError(f"cannot resolve {host}: {exc.strerror}") from None
        for info in infos:
            ip = str(info[4][0])
            reason = check_address(ip, False)
            if reason is not None:
                raise ChannelUrlError(
                    f"{host} resolves to {ip}, a {reason}: channels reach internal addresses only when the "
                    f"server runs with {ALLOW_FLAG}"
                )


def _answer(response: httpx.Response) -> str:
    text = response.text[:ANSWER_CHARS].strip()
    return f"HTTP {response.status_code} {response.reason_phrase}" + (f": {text}" if text else "")


def client() -> httpx.AsyncClient:
    """One client per process: connections (and the TLS context, costly to build) are reused."""
    return httpx.AsyncClient(follow_redirects=False, limits=httpx.Limits(max_connections=200))


async def post_webhook(
    target: Target,
    body: bytes,
    *,
    msg_id: str,
    timestamp: int,
    timeout_s: float,
    http: httpx.AsyncClient | None = None,
) -> Outcome:
    headers = signing.headers(target.secret, msg_id, timestamp, body)
    try:
        if http is None:
            async with client() as own:
                response = await own.post(target.url, content=body, headers=headers, timeout=timeout_s)
        else:
            response = await http.post(target.url, content=body, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException:
        return Outcome(False, f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return Outcome(False, f"{type(exc).__name__}: {exc}"[:ANSWER_CHARS])
    if 200 <= response.status_code < 300:
        return Outcome(True, _answer(response))
    return Outcome(False, _answer(response), refused=400 <= response.status_code < 500)


def _apprise_send(url: str, title: str, body: str) -> Outcome:
    import apprise

    sender = apprise.Apprise()
    if not sender.add(url):
        return Outcome(False, "not a valid Apprise URL", refused=True)
    with apprise.LogCapture(level=apprise.logging.WARNING) as log:
        result = sender.notify(title=title, body=body)
    said = " ".join(line.split(" - ", 2)[-1] for line in log.getvalue().splitlines()).strip()
    if bool(result):
        return Outcome(True, said[:ANSWER_CHARS] or "delivered")
    # Apprise reports a receiver's answer only in its log ("... Bad Request - 400").
    return Outcome(
        False, (said or "delivery failed")[:ANSWER_CHARS], refused=_STATUS.search(said) is not None
    )


async def send(
    target: Target,
    *,
    body: bytes,
    title: str,
    message: str,
    msg_id: str,
    timestamp: int,
    timeout_s: float,
    allow_private_targets: bool,
    http: httpx.AsyncClient | None = None,
) -> Outcome:
    """Deliver once, within ``timeout_s`` (the guard's DNS look-up included)."""
    try:
        if not allow_private_targets:
            await asyncio.wait_for(asyncio.to_thread(check_private, target, False), timeout_s)
    except ResolveError as exc:
        return Outcome(False, str(exc))
    except ChannelUrlError as exc:
        return Outcome(False, str(exc), refused=True)
    except TimeoutError:
        return Outcome(False, f"no DNS answer within {timeout_s:g} s")
    if target.kind == WEBHOOK:
        return await post_webhook(
            target, body, msg_id=msg_id, timestamp=timestamp, timeout_s=timeout_s, http=http
        )
    try:
        # Apprise is synchronous: its thread may outlive the time-out, the channel does not wait.
        return await asyncio.wait_for(asyncio.to_thread(_apprise_send, target.url, title, message), timeout_s)
    except TimeoutError:
        return Outcome(False, f"no answer within {timeout_s:g} s")


@dataclass(frozen=True)
class TestSent:
    outcome: Outcome
    payload: dict[str, Any]  # the JSON body the test carried


def send_test(
    target: Target, *, now: datetime, dashboard_url: str, timeout_s: float, allow_private_targets: bool
) -> TestSent:
    """One ``notification.test``, delivered now rather than through the outbox: the CLI's
    ``keychest notify test`` and the "send a test" of REST and the dashboard. Blocking: call
    it outside an event loop and any transaction."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    event = payload.test_event(now)
    body = payload.build(
        event,
        msg_id=msg_id,
        occurred_at=now,
        now=now,
        host=event.endpoint,
        port=443,
        account=None,
        dashboard_url=dashboard_url,
        ack_url=None,
    )
    outcome = asyncio.run(
        send(
            target,
            body=json.dumps(body, separators=(",", ":")).encode(),
            title=event.title,
            message=event.message,
            msg_id=msg_id,
            timestamp=int(time.time()),
            timeout_s=timeout_s,
            allow_private_targets=allow_private_targets,
        )
    )
    return TestSent(outcome, body)
