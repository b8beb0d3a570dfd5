"""The outbox sender: lease due mails, render them, hand them to SMTP, mark them sent.

Crash semantics (docs/mail.md): a mail is marked ``sending`` with a lease in one committed
transaction before the SMTP transaction starts, and ``sent`` in a transaction committed right
after the server's final 250. A process that dies between those two commits leaves the row
``sending``; when the lease ends it is sent again (same Message-ID). That window, a few
milliseconds per mail, is the only way a mail goes out twice; no mail is ever lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from keychest.notify import render, smtp
from keychest.service import delivery, reports, tokens
from keychest.service.context import Ctx
from keychest.service.delivery import Composed, QueuedMail
from keychest.service.facade import Keychest

log = logging.getLogger("keychest.mailer")
T = TypeVar("T")

# Where each token's link points (web.mailflow serves these paths).
PATHS = {
    "confirm_account": "/confirm",
    "block_account": "/block",
    "approve_key": "/keys/approve",
    "revoke_key": "/keys/revoke",
    "signin": "/signin",
    "unsubscribe": "/unsubscribe",
    "confirm_address": "/confirm-address",
}


def link(ctx: Ctx, purpose: str, account_id: int, **kwargs: Any) -> str:
    raw = tokens.issue(ctx, purpose, account_id, **kwargs)
    return f"{ctx.settings.mail.public_url}{PATHS[purpose]}/{raw}"


def _unsubscribe_headers(url: str) -> dict[str, str]:
    # RFC 8058 one-click: mail providers POST "List-Unsubscribe=One-Click" to the URL.
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def compose(ctx: Ctx, mail: QueuedMail) -> Composed | str:
    """Render one outbox row (a str is a reason to skip it for good). Runs inside the lease
    transaction: the tokens it issues are committed with the ``sending`` mark."""
    assert mail.account_id is not None  # delivery.skip_reason refuses rows without an account
    account_id = mail.account_id
    payload = mail.payload
    base = {
        "email": mail.to_addr,
        "public_url": ctx.settings.mail.public_url,
        "ip": payload.get("ip") or "unknown address",
        "at": payload.get("at"),
    }
    if mail.kind in ("confirm_account", "approve_key"):
        key = reports.key_summary(ctx, int(payload.get("api_key_id", 0)))
        if key is None:
            return "API key gone"
        if mail.kind == "approve_key" and key.state != "pending":
            return f"API key no longer pending ({key.state})"
        if mail.kind == "confirm_account":
            context = {
                **base,
                "key": key,
                "confirm_url": link(ctx, "confirm_account", account_id, api_key_id=key.id),
                "block_url": link(ctx, "block_account", account_id, api_key_id=key.id),
            }
            subject = "Confirm your keychest account"
        else:
            context = {
                **base,
                "key": key,
                "approve_url": link(ctx, "approve_key", account_id, api_key_id=key.id),
                "revoke_url": link(ctx, "revoke_key", account_id, api_key_id=key.id),
            }
            subject = f"Approve a new API key ({key.prefix}...) for your keychest account"
        text, html = render.render(mail.kind, **context)
        return Composed(subject, text, html, {})
    if mail.kind == "signin":
        context = {**base, "signin_url": link(ctx, "signin", account_id)}
        text, html = render.render("signin", **context)
        return Composed("Your keychest sign-in link", text, html, {})
    if mail.kind == "confirm_address":
        context = {
            **base,
            "confirm_url": link(ctx, "confirm_address", account_id, data={"email": mail.to_addr}),
        }
        text, html = render.render("confirm_address", **context)
        return Composed("Confirm this address for keychest notifications", text, html, {})
    if mail.kind in ("alerts", "weekly"):
        scope = "alerts" if mail.kind == "alerts" else "weekly"
        unsubscribe_url = link(ctx, "unsubscribe", account_id, data={"scope": scope})
        context = {
            **base,
            "unsubscribe_url": unsubscribe_url,
            "dashboard_url": ctx.settings.mail.public_url + "/",
        }
        if mail.kind == "alerts":
            context["alerts"] = payload.get("alerts", [])
        else:
            context["report"] = payload.get("report", {})
        text, html = render.render(mail.kind, **context)
        subject = str(payload.get("subject") or "keychest")
        return Composed(subject, text, html, _unsubscribe_headers(unsubscribe_url))
    return f"unknown mail kind {mail.kind}"


class Sender:
    """Sends what is due, one batch at a time, over one SMTP session per batch."""

    def __init__(
        self,
        service: Keychest,
        *,
        batch: int = 20,
        lease_s: float = 300.0,
        retry_base_s: float = 30.0,
        idle_poll_s: float = 1.0,
    ) -> None:
        self.service = service
        self.batch = batch
        # Longer than one SMTP transaction can take (aiosmtplib time-out 60 s per command).
        self.lease_s = lease_s
        self.retry_base_s = retry_base_s
        self.idle_poll_s = idle_poll_s
        self._db = ThreadPoolExecutor(1, thread_name_prefix="keychest-mail-db")
        self.sent = 0
        self.failed = 0

    async def _db_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._db, functools.partial(self.service.call, functools.partial(fn, **kwargs), *args)
        )

    async def run_once(self) -> int:
        """Lease and try one batch; the number of queued mails it dealt with (sent, failed or skipped)."""
        settings = self.service.settings.mail
        if settings.smtp_host is None:
            return 0
        batch = await self._db_call(delivery.lease, compose, limit=self.batch, lease_s=self.lease_s)
        if not batch:
            return batch.examined
        connection = smtp.Connection(settings)
        try:
            for outgoing in batch:
                message = smtp.build_message(settings, outgoing, self.service.clock())
                try:
                    await connection.send(message)
                except smtp.SendError as exc:
                    self.failed += 1
                    log.warning("mail %d (%s) not sent, will retry: %s", outgoing.id, outgoing.kind, exc.text)
                    await self._db_call(
                        delivery.mark_failed,
                        outgoing.id,
                        exc.text,
                        refused=exc.refused,
                        base_s=self.retry_base_s,
                    )
                    continue
                # Commit "sent" at once: this gap is the whole at-least-once window.
                await self._db_call(delivery.mark_sent, outgoing.id)
                self.sent += 1
                log.info("mail %d (%s) sent to %s", outgoing.id, outgoing.kind, outgoing.to_addr)
        finally:
            await connection.close()
        return batch.examined

    async def run(self) -> None:
        if self.service.settings.mail.smtp_host is None:
            log.warning("no --smtp server: mails stay queued in the outbox")
        try:
            while True:
                try:
                    tried = await self.run_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The database is away, say: leases expire, nothing is lost; try again soon.
                    log.exception("mail sender pass failed")
                    tried = 0
                if tried < self.batch:
                    await asyncio.sleep(self.idle_poll_s)
        finally:
            self._db.shutdown(wait=False, cancel_futures=True)

    async def drain(self, *, max_batches: int = 1000) -> None:
        """Send everything due now (the `report weekly` command), then return."""
        try:
            for _ in range(max_batches):
                if await self.run_once() == 0:
                    return
        finally:
            self._db.shutdown(wait=True)
