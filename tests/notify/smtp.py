"""A real SMTP server for tests (aiosmtpd on 127.0.0.1, a free port) that keeps what it gets.

    from tests.notify.smtp import SmtpSink, smtp_sink   # the fixture, for a conftest.py

    def test_x(smtp_sink):
        ... run `keychest serve --smtp {smtp_sink.address}` ...
        mail = smtp_sink.wait_for(lambda m: m["To"] == "me@example.org")
        url = smtp_sink.links(mail)[0]

It can be stopped and started again on the same port (an SMTP outage), and told to answer
RCPT with a temporary or permanent refusal.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.net import free_port

URL = re.compile(r"https?://[^\s<>\"']+")


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.sink.refuse:
            return self.sink.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.original_content or envelope.content or b""
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.sink.lock:
            self.sink.messages.append(message)
            self.sink.raw.append(raw)
            self.sink.envelopes.append((envelope.mail_from or "", list(envelope.rcpt_tos)))
        return "250 Message accepted"


class SmtpSink:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        # The bytes as received, for checks the parser would smooth over (header folding).
        self.raw: list[bytes] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()
        # An SMTP reply to give every RCPT instead of accepting it, e.g. "451 4.3.0 try later".
        self.refuse: str | None = None
        self._controller: Controller | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SmtpSink:
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()
            self.raw.clear()
            self.envelopes.clear()

    def matching(self, predicate: Callable[[EmailMessage], bool] | None = None) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if predicate is None or predicate(m)]

    def to(self, address: str) -> list[EmailMessage]:
        return self.matching(lambda m: str(m["To"]) == address)

    def wait_for(
        self, predicate: Callable[[EmailMessage], bool] | None = None, *, count: int = 1, timeout: float = 15
    ) -> EmailMessage:
        """The latest matching mail, once ``count`` of them arrived; AssertionError after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(predicate)
            if len(found) >= count:
                return found[-1]
            if time.monotonic() > deadline:
                subjects = [str(m["Subject"]) for m in self.matching()]
                raise AssertionError(f"{count} mail(s) not received within {timeout}s; got {subjects}")
            time.sleep(0.05)

    def wait_to(
        self, address: str, *, subject: str = "", count: int = 1, timeout: float = 15
    ) -> EmailMessage:
        return self.wait_for(
            lambda m: str(m["To"]) == address and subject in str(m["Subject"]), count=count, timeout=timeout
        )

    @staticmethod
    def text(message: EmailMessage) -> str:
        part = message.get_body(preferencelist=("plain",))
        assert part is not None, "no text/plain part"
        return part.get_content().replace("\r\n", "\n")

    @staticmethod
    def html(message: EmailMessage) -> str:
        part = message.get_body(preferencelist=("html",))
        assert part is not None, "no text/html part"
        return part.get_content().replace("\r\n", "\n")

    @classmethod
    def links(cls, message: EmailMessage, containing: str = "") -> list[str]:
        return [url for url in URL.findall(cls.text(message)) if containing in url]

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def module_smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink
