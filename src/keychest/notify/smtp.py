"""Building MIME messages and handing them to an SMTP server (aiosmtplib)."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib

from keychest.config import MailSettings
from keychest.notify.headers import MAIL_POLICY
from keychest.notify.mail import Outgoing

TIMEOUT_S = 60.0


def message_id(mail_id: int, created_at: datetime, mail_from: str) -> str:
    """Stable across retries: a mail sent twice (see docs/mail.md) has one Message-ID, and
    mail clients that deduplicate by it show it once."""
    domain = mail_from.rpartition("@")[2] or "keychest.invalid"
    tag = hashlib.sha256(f"{mail_id}:{created_at.isoformat()}:{domain}".encode()).hexdigest()[:16]
    return f"<keychest.{mail_id}.{tag}@{domain}>"


def build_message(settings: MailSettings, outgoing: Outgoing, now: datetime) -> EmailMessage:
    mail = outgoing.mail
    # List-Unsubscribe written plain, never RFC 2047 encoded (RFC 8058): see notify/headers.py.
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = settings.mail_from
    message["To"] = outgoing.to_addr
    message["Subject"] = mail.subject
    message["Date"] = email.utils.format_datetime(now.replace(tzinfo=UTC))
    message["Message-ID"] = message_id(outgoing.id, outgoing.created_at, settings.mail_from)
    message["Auto-Submitted"] = "auto-generated"  # no vacation replies to a robot
    for name, value in mail.headers.items():
        message[name] = value
    message.set_content(mail.text)
    message.add_alternative(mail.html, subtype="html")
    return message


class SendError(Exception):
    def __init__(self, text: str, *, refused: bool) -> None:
        super().__init__(text)
        self.text = text
        # The server said no (5xx): retrying soon will not help. Otherwise: down, 4xx, time-out.
        self.refused = refused


class Connection:
    """One SMTP session for a batch of mails; opened lazily, reused, closed at the end."""

    def __init__(self, settings: MailSettings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None

    async def _open(self) -> aiosmtplib.SMTP:
        settings = self.settings
        assert settings.smtp_host is not None
        client = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            timeout=TIMEOUT_S,
            start_tls=settings.smtp_starttls,
            use_tls=False,
        )
        await client.connect()
        if settings.smtp_user:
            await client.login(settings.smtp_user, settings.smtp_password or "")
        return client

    async def send(self, message: EmailMessage) -> None:
        try:
            if self._client is None or not self._client.is_connected:
                self._client = await self._open()
            await self._client.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise SendError(_describe(exc), refused=_permanent(exc)) from None
        except aiosmtplib.SMTPResponseException as exc:
            await self._drop()
            raise SendError(f"SMTP {exc.code} {exc.message}"[:500], refused=500 <= exc.code < 600) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._drop()
            raise SendError(f"{type(exc).__name__}: {exc}"[:500], refused=False) from None

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # already broken: nothing more to close
                client.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()


def _describe(exc: aiosmtplib.SMTPRecipientsRefused) -> str:
    return "; ".join(f"SMTP {r.code} {r.message}" for r in exc.recipients)[:500] or "recipient refused"


def _permanent(exc: aiosmtplib.SMTPRecipientsRefused) -> bool:
    return all(500 <= r.code < 600 for r in exc.recipients)
