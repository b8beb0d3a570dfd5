"""The outbox sender against a real SMTP server, on every test database: delivery, retries
while SMTP is down, leases after a crash, mails that must never go out, preferences."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import select

from keychest.config import MailSettings, Settings
from keychest.servers.mailer import Sender
from keychest.service import accounts, domains, keys, outbox, preferences, tokens
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from keychest.store.models import OutboxMail, Token
from tests.notify.smtp import SmtpSink
from tests.support.net import free_port


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 10, 0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def svc(db_url: str, clock: Clock, smtp_port: int) -> Iterator[Keychest]:
    db = Database(db_url)
    upgrade(db)
    mail = MailSettings(
        smtp_host="127.0.0.1", smtp_port=smtp_port, mail_from="keychest@kc.test", public_url="https://kc.test"
    )
    service = Keychest(
        db, Settings(db_url=db_url, data_dir=Path("."), mail_domain="keychest.test", mail=mail), clock
    )
    yield service
    db.dispose()


def send_once(service: Keychest, **kwargs: float) -> Sender:
    sender = Sender(service, retry_base_s=kwargs.get("retry_base_s", 30.0))
    asyncio.run(sender.run_once())
    sender._db.shutdown()
    return sender


def claim_new(service: Keychest, email: str, *domain_names: str) -> str:
    key = service.from_ip("198.51.100.7").call(keys.create).key
    for name in domain_names:
        service.from_ip("198.51.100.7").call(domains.add, key, name)
    service.from_ip("198.51.100.7").call(accounts.claim, key, email)
    return key


def rows(service: Keychest) -> list[OutboxMail]:
    return service.read(lambda ctx: list(ctx.session.scalars(select(OutboxMail).order_by(OutboxMail.id))))


def test_confirmation_is_sent_once_and_its_tokens_are_stored_hashed(svc: Keychest, smtp_port: int) -> None:
    with SmtpSink(smtp_port) as sink:
        key = claim_new(svc, "new@example.org", "www.example.net", "api.example.net:8443")
        send_once(svc)
        mail = sink.wait_to("new@example.org")
        send_once(svc)
        assert len(sink.messages) == 1
    text = sink.text(mail)
    assert str(mail["Subject"]) == "Confirm your keychest account"
    assert "198.51.100.7" in text and key[:8] + "..." in text and "2026-12-01 10:00 UTC" in text
    assert "www.example.net" in text and "api.example.net:8443" in text
    confirm, block = sink.links(mail, "/confirm/")[0], sink.links(mail, "/block/")[0]
    assert confirm.startswith("https://kc.test/confirm/") and block.startswith("https://kc.test/block/")
    [row] = rows(svc)
    assert (row.state, row.attempts, row.sent_at) == ("sent", 1, svc.clock())
    stored = svc.read(lambda ctx: list(ctx.session.scalars(select(Token))))
    raw = {confirm.rsplit("/", 1)[1], block.rsplit("/", 1)[1]}
    assert {t.token_hash for t in stored} == {tokens.hash_token(r) for r in raw}
    assert not raw & {str(v) for t in stored for v in (t.token_hash, t.data, t.purpose)}
    assert all(t.expires_at == svc.clock() + timedelta(days=7) for t in stored)


def test_smtp_down_for_a_while_loses_no_mail(svc: Keychest, clock: Clock, smtp_port: int) -> None:
    claim_new(svc, "patient@example.org")
    for attempt in range(1, 4):  # nothing listens: connection refused, three times
        send_once(svc, retry_base_s=10)
        [row] = rows(svc)
        assert (row.state, row.attempts) == ("queued", attempt)
        assert "refused" in (row.last_error or "").lower() or "connect" in (row.last_error or "").lower()
        assert row.next_attempt_at == clock.now + timedelta(seconds=10 * 2 ** (attempt - 1))
        send_once(svc)  # not due yet: nothing happens
        assert rows(svc)[0].attempts == attempt
        clock.advance(seconds=10 * 2 ** (attempt - 1))
    with SmtpSink(smtp_port) as sink:
        sink.refuse = "451 4.3.0 try again later"
        send_once(svc, retry_base_s=10)
        assert rows(svc)[0].state == "queued" and "451" in (rows(svc)[0].last_error or "")
        sink.refuse = None
        clock.advance(hours=1)
        send_once(svc)
        sink.wait_to("patient@example.org")
    [row] = rows(svc)
    assert (row.state, row.attempts, row.last_error) == ("sent", 5, None)
    assert len(sink.messages) == 1


def test_a_sender_that_died_mid_send_is_replaced_once_its_lease_ends(
    svc: Keychest, clock: Clock, smtp_port: int
) -> None:
    claim_new(svc, "crash@example.org")
    # A sender leases the mail, then dies before (or while) talking to SMTP.
    leased = svc.call(lambda ctx: outbox.lease(ctx, limit=10, lease_s=300))
    assert [m.to_addr for m in leased] == ["crash@example.org"]
    assert rows(svc)[0].state == "sending"
    with SmtpSink(smtp_port) as sink:
        send_once(svc)
        assert sink.messages == []  # still leased: another sender keeps off it
        clock.advance(seconds=301)
        send_once(svc)
        mail = sink.wait_to("crash@example.org")
    [row] = rows(svc)
    assert (row.state, row.attempts) == ("sent", 2)
    # The new attempt carries fresh links; the Message-ID is the row's, as the first would have had.
    assert mail["Message-ID"].startswith(f"<keychest.{row.id}.")


def test_a_permanently_refused_recipient_fails_after_a_few_tries(
    svc: Keychest, clock: Clock, smtp_port: int
) -> None:
    claim_new(svc, "nobody@example.org")
    with SmtpSink(smtp_port) as sink:
        sink.refuse = "550 5.1.1 no such user"
        for _ in range(outbox.MAX_REFUSED_ATTEMPTS):
            send_once(svc)
            clock.advance(hours=2)
    [row] = rows(svc)
    assert (row.state, row.attempts) == ("failed", outbox.MAX_REFUSED_ATTEMPTS)
    assert "550" in (row.last_error or "")


def test_nothing_goes_to_placeholders_or_unconfirmed_addresses(svc: Keychest, smtp_port: int) -> None:
    claim_new(svc, "host-abc@keychest.test", "www.example.net")  # placeholder: nothing queued at all
    claim_new(svc, "dormant@example.org")
    dormant = svc.read(lambda ctx: accounts._find(ctx, "dormant@example.org"))
    placeholder = svc.read(lambda ctx: accounts._find(ctx, "host-abc@keychest.test"))
    assert dormant is not None and placeholder is not None

    def enqueue_more(ctx):  # type: ignore[no-untyped-def]
        # Mails that could only be queued by a bug or a race; the sender must still refuse them.
        outbox.enqueue(ctx, kind="alerts", to_addr="dormant@example.org", account_id=dormant.id, payload={})
        outbox.enqueue(
            ctx, kind="signin", to_addr="host-abc@keychest.test", account_id=placeholder.id, payload={}
        )
        outbox.enqueue(
            ctx,
            kind="confirm_account",
            to_addr="host-abc@keychest.test",
            account_id=placeholder.id,
            payload={},
        )
        outbox.enqueue(ctx, kind="weekly", to_addr="stranger@example.org", account_id=None, payload={})

    svc.call(enqueue_more)
    with SmtpSink(smtp_port) as sink:
        send_once(svc)
        sink.wait_to("dormant@example.org", subject="Confirm")
        # Once confirmed, a second confirmation is moot; everything else stays skipped.
        svc.call(
            lambda ctx: outbox.enqueue(
                ctx, kind="confirm_account", to_addr="dormant@example.org", account_id=dormant.id, payload={}
            )
        )
        svc.call(accounts.confirm, dormant.id)
        send_once(svc)
    assert len(sink.messages) == 1
    states = [(r.kind, r.to_addr, r.state, r.last_error) for r in rows(svc)]
    assert states[0][2] == "sent"
    assert [s[2] for s in states[1:]] == ["skipped"] * 5, states
    assert {s[3] for s in states[1:]} >= {"address not confirmed", "placeholder address", "no account"}


def test_preferences_defaults_validation_and_a_confirmed_override(svc: Keychest, smtp_port: int) -> None:
    claim_new(svc, "prefs@example.org")
    account = svc.read(lambda ctx: accounts._find(ctx, "prefs@example.org"))
    assert account is not None
    prefs = svc.read(preferences.get, account.id)
    assert prefs == preferences.Preferences()
    assert (
        prefs.expiry_thresholds == (28, 14, 7, 3, 1)
        and prefs.weekly_day == 0
        and prefs.weekly_time == "08:00"
    )
    bad = [
        {"weekly_day": 7},
        {"weekly_time": "8:00"},
        {"weekly_time": "24:00"},
        {"timezone": "Mars/Olympus"},
        {"expiry_thresholds": []},
        {"expiry_thresholds": [0]},
        {"expiry_thresholds": "a,b"},
        {"weekly_enabled": "yes"},
        {"notify_email": "not an address"},
        {"notify_email": "x@keychest.test"},
        {"colour": "blue"},
    ]
    for change in bad:
        with pytest.raises(ServiceError) as info:
            svc.call(partial(preferences.update, **change), account.id)
        assert info.value.code == 422, change
    new = svc.call(
        lambda ctx: preferences.update(
            ctx,
            account.id,
            expiry_thresholds="7, 30,1",
            weekly_day=4,
            weekly_time="17:30",
            timezone="Europe/Prague",
            weekly_enabled=False,
        )
    )
    assert new == replace(
        prefs,
        expiry_thresholds=(30, 7, 1),
        weekly_day=4,
        weekly_time="17:30",
        timezone="Europe/Prague",
        weekly_enabled=False,
    )
    assert svc.read(preferences.get, account.id) == new
    svc.call(accounts.confirm, account.id)
    svc.call(partial(preferences.update, notify_email="Ops@Example.ORG"), account.id)
    with SmtpSink(smtp_port) as sink:
        send_once(svc)
        mail = sink.wait_to("ops@example.org", subject="Confirm this address")
    link = sink.links(mail, "/confirm-address/")[0]
    account_row = svc.read(lambda ctx: accounts._find(ctx, "prefs@example.org"))
    stored = svc.read(preferences.get, account.id)
    assert stored.notify_email == "ops@example.org" and not stored.notify_email_confirmed
    assert preferences.recipient(account_row, stored) == "prefs@example.org"  # type: ignore[arg-type]
    from keychest.service import links

    svc.call(links.act, "confirm_address", link.rsplit("/", 1)[1])
    stored = svc.read(preferences.get, account.id)
    assert preferences.recipient(account_row, stored) == "ops@example.org"  # type: ignore[arg-type]


def test_a_batch_of_only_skipped_mails_does_not_stop_the_drain(svc: Keychest, smtp_port: int) -> None:
    """`report weekly --now` drains the outbox: skipped rows ahead of a real mail are progress."""

    def enqueue_skipped(ctx):  # type: ignore[no-untyped-def]
        for n in range(7):
            outbox.enqueue(ctx, kind="weekly", to_addr=f"nobody{n}@example.org", account_id=None, payload={})

    svc.call(enqueue_skipped)
    claim_new(svc, "after-the-skipped@example.org")
    sender = Sender(svc, retry_base_s=30.0)
    sender.batch = 3  # the first two batches hold nothing but mails to skip
    with SmtpSink(smtp_port) as sink:
        asyncio.run(sender.drain())
        sink.wait_to("after-the-skipped@example.org", subject="Confirm")
    assert [r.state for r in rows(svc)] == ["skipped"] * 7 + ["sent"]
