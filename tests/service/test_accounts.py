"""Keys, claims, domains and quotas through the service facade, on every test database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from keychest.config import Limits, Settings
from keychest.service import accounts, audit, domains, keys, outbox, visibility
from keychest.service.errors import ServiceError
from keychest.service.facade import Call, Keychest
from keychest.store.db import Database, upgrade
from keychest.store.models import ApiKey


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 12, 0, 0)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_service(db_url: str, clock: Clock, **limits: int) -> Keychest:
    db = Database(db_url)
    upgrade(db)
    settings = Settings(
        db_url=db_url, data_dir=Path("."), mail_domain="keychest.test", limits=Limits(**limits)
    )
    return Keychest(db, settings, clock)


@pytest.fixture
def svc(db_url: str, clock: Clock) -> Iterator[Keychest]:
    service = make_service(db_url, clock)
    yield service
    service.db.dispose()


def test_keys_are_random_and_stored_only_hashed(svc: Keychest) -> None:
    a = svc.from_ip("192.0.2.1").call(keys.create)
    b = svc.from_ip("192.0.2.1").call(keys.create)
    assert a.key != b.key and len(a.key) >= 32
    assert keys.KEY_PATTERN.fullmatch(a.key)
    rows = svc.read(lambda ctx: list(ctx.session.scalars(select(ApiKey))))
    stored = {col for row in rows for col in (row.key_hash, row.prefix)}
    assert a.key not in stored and b.key not in stored
    assert rows[0].created_ip == "192.0.2.1"


def test_claim_new_email_makes_dormant_account_and_queues_confirmation(svc: Keychest) -> None:
    key = svc.from_ip("192.0.2.1").call(keys.create).key
    outcome = svc.from_ip("192.0.2.1").call(accounts.claim, key, "Owner@Example.ORG")
    assert (outcome.outcome, outcome.email) == ("created", "owner@example.org")
    summary = svc.read(accounts.list_summaries)[0]
    assert (summary.email, summary.state, summary.keys) == ("owner@example.org", "dormant", 1)
    mails = svc.read(outbox.list_all)
    assert [(m.kind, m.to_addr, m.state) for m in mails] == [
        ("confirm_account", "owner@example.org", "queued")
    ]
    # Claiming again with the same address changes nothing and mails nothing.
    assert svc.call(accounts.claim, key, "owner@example.org").outcome == "already"
    assert len(svc.read(outbox.list_all)) == 1


def test_every_key_claimed_for_a_dormant_address_gets_its_own_confirmation(svc: Keychest) -> None:
    # Issue 10 item 1: a stranger's K1 first, the owner's K2 later; confirming K2's mail
    # approves K2 only, and K1 stays pending.
    first = svc.call(keys.create).key
    account_id = svc.from_ip("203.0.113.66").call(accounts.claim, first, "owner@example.org").account_id
    second = svc.call(keys.create).key
    assert svc.from_ip("198.51.100.1").call(accounts.claim, second, "owner@example.org").outcome == "pending"
    k1, k2 = svc.read(keys.list_all)
    assert (k1.state, k2.state) == ("pending", "pending")
    mails = sorted(svc.read(outbox.list_all), key=lambda m: m.id)
    assert [(m.kind, m.payload["api_key_id"], m.payload["ip"]) for m in mails] == [
        ("confirm_account", k1.id, "203.0.113.66"),
        ("confirm_account", k2.id, "198.51.100.1"),
    ]
    svc.call(accounts.confirm, account_id, k2.id)
    states = {k.id: k.state for k in svc.read(keys.list_all)}
    assert states == {k1.id: "pending", k2.id: "active"}


def test_confirmation_mails_per_address_are_capped(svc: Keychest) -> None:
    for n in range(accounts.CONFIRM_MAILS_PER_DAY):
        key = svc.call(keys.create).key
        svc.from_ip(f"192.0.2.{n + 1}").call(accounts.claim, key, "owner@example.org")
    key = svc.call(keys.create).key
    # Past the cap the claim holds (pending; refusing it would lock the owner out), unmailed.
    assert svc.from_ip("192.0.2.99").call(accounts.claim, key, "owner@example.org").outcome == "pending"
    assert len(svc.read(outbox.list_all)) == accounts.CONFIRM_MAILS_PER_DAY


def test_approval_mails_per_address_are_capped(svc: Keychest) -> None:
    first = svc.call(keys.create).key
    claimed = svc.call(accounts.claim, first, "owner@example.org")
    svc.call(accounts.confirm, claimed.account_id, claimed.api_key_id)
    for n in range(accounts.CONFIRM_MAILS_PER_DAY + 2):
        key = svc.call(keys.create).key
        assert (
            svc.from_ip(f"192.0.2.{n + 1}").call(accounts.claim, key, "owner@example.org").outcome
            == "pending"
        )
    kinds = [m.kind for m in svc.read(outbox.list_all)]
    assert kinds.count("approve_key") == accounts.CONFIRM_MAILS_PER_DAY


def test_a_stranger_cannot_spend_the_owners_claims(db_url: str, clock: Clock) -> None:
    # Issue 10 item 10: the per-address claim quota counts per (address, client address).
    svc = make_service(db_url, clock, claims_per_email_per_day=2)
    try:
        for _ in range(2):
            key = svc.call(keys.create).key
            svc.from_ip("203.0.113.66").call(accounts.claim, key, "victim@example.org")
        key = svc.call(keys.create).key
        with pytest.raises(ServiceError) as caught:
            svc.from_ip("203.0.113.66").call(accounts.claim, key, "victim@example.org")
        assert caught.value.code == 429
        own = svc.call(keys.create).key
        assert (
            svc.from_ip("198.51.100.1").call(accounts.claim, own, "victim@example.org").outcome == "pending"
        )
    finally:
        svc.db.dispose()


def test_an_unconfirmed_claim_can_be_pointed_elsewhere(svc: Keychest) -> None:
    # Issue 10 item 3: "me@example.co" (a truncated request) is not permanent.
    key = svc.call(keys.create).key
    svc.call(accounts.claim, key, "me@example.co")
    moved = svc.call(accounts.claim, key, "me@example.com")
    assert (moved.outcome, moved.email) == ("created", "me@example.com")
    mails = {(m.to_addr, m.state) for m in svc.read(outbox.list_all)}
    assert mails == {("me@example.co", "skipped"), ("me@example.com", "queued")}
    assert svc.read(keys.list_all)[0].state == "pending"


def test_a_blocked_address_is_offered_a_reopen_at_most_daily(svc: Keychest, clock: Clock) -> None:
    key = svc.call(keys.create).key
    account_id = svc.call(accounts.claim, key, "owner@example.org").account_id
    svc.call(accounts.block, account_id)
    for _ in range(2):
        again = svc.call(keys.create).key
        # Not swallowed: the claim is taken (pending), and the owner hears of it.
        assert svc.call(accounts.claim, again, "owner@example.org").outcome == "pending"
    kinds = sorted(m.kind for m in svc.read(outbox.list_all))
    assert kinds == ["confirm_account", "reopen_account"]
    clock.now += timedelta(days=1, seconds=1)
    svc.call(accounts.claim, svc.call(keys.create).key, "owner@example.org")
    assert sorted(m.kind for m in svc.read(outbox.list_all)).count("reopen_account") == 2
    svc.call(accounts.reopen, account_id)
    assert svc.read(accounts.list_summaries)[0].state == "active"


def test_block_and_key_revocation_end_every_session(svc: Keychest) -> None:
    key = svc.call(keys.create).key
    claimed = svc.call(accounts.claim, key, "owner@example.org")
    account_id = claimed.account_id
    svc.call(accounts.confirm, account_id, claimed.api_key_id)
    # Refusing a pending (maybe a stranger's) key leaves the owner signed in.
    stranger = svc.call(keys.create).key
    svc.call(keys.revoke, svc.call(accounts.claim, stranger, "owner@example.org").api_key_id)
    before = svc.read(accounts.session_version, account_id)
    assert before == 0
    svc.call(keys.revoke, claimed.api_key_id)
    after = svc.read(accounts.session_version, account_id)
    assert before is not None and after == before + 1
    svc.call(accounts.block, account_id)
    assert svc.read(accounts.session_version, account_id) is None


def test_approval_mail_once_the_owner_is_confirmed(svc: Keychest) -> None:
    first = svc.call(keys.create).key
    claimed = svc.call(accounts.claim, first, "owner@example.org")
    account_id = claimed.account_id
    svc.call(accounts.confirm, account_id, claimed.api_key_id)
    second = svc.call(keys.create).key
    svc.call(accounts.claim, second, "owner@example.org")
    assert sorted(m.kind for m in svc.read(outbox.list_all)) == ["approve_key", "confirm_account"]


def test_placeholder_is_never_mailed_and_can_be_replaced(svc: Keychest) -> None:
    key = svc.call(keys.create).key
    assert svc.call(accounts.claim, key, "x7f3k@keychest.test").outcome == "placeholder"
    assert svc.read(outbox.list_all) == []
    svc.call(domains.add, key, "www.example.net")
    assert svc.call(accounts.claim, key, "real@example.org").outcome == "created"
    rows = svc.read(domains.list_rows)
    assert [(r.domain, r.account_email) for r in rows] == [("www.example.net", "real@example.org")]
    assert [m.to_addr for m in svc.read(outbox.list_all)] == ["real@example.org"]


def test_a_confirmed_claim_cannot_be_moved(svc: Keychest) -> None:
    key = svc.call(keys.create).key
    account_id = svc.call(accounts.claim, key, "owner@example.org").account_id
    svc.call(accounts.confirm, account_id, svc.read(keys.list_all)[0].id)
    with pytest.raises(ServiceError) as caught:
        svc.call(accounts.claim, key, "thief@example.org")
    assert caught.value.code == 403


def test_unknown_and_revoked_keys(svc: Keychest) -> None:
    with pytest.raises(ServiceError) as caught:
        svc.call(domains.add, "not-a-key-but-long-enough", "www.example.net")
    assert caught.value.code == 401
    issued = svc.call(keys.create)
    svc.call(keys.revoke, issued.id)
    with pytest.raises(ServiceError) as caught:
        svc.call(domains.add, issued.key, "www.example.net")
    assert caught.value.code == 403


def test_add_is_idempotent_per_account(svc: Keychest) -> None:
    first = svc.call(keys.create).key
    claimed = svc.call(accounts.claim, first, "owner@example.org")
    account_id = claimed.account_id
    svc.call(accounts.confirm, account_id, claimed.api_key_id)
    assert svc.call(domains.add, first, "www.example.net").created
    assert not svc.call(domains.add, first, "WWW.example.net.").created
    second = svc.call(keys.create).key
    svc.call(accounts.claim, second, "owner@example.org")
    svc.call(keys.approve, svc.read(keys.list_all)[1].id)
    assert not svc.call(domains.add, second, "www.example.net").created
    assert len(svc.read(domains.list_rows)) == 1
    assert len(svc.read(lambda ctx: list(ctx.session.scalars(visibility.account_endpoints(account_id))))) == 1


def test_quotas(db_url: str, clock: Clock) -> None:
    svc = make_service(
        db_url, clock, keys_per_ip_per_hour=2, domains_per_unconfirmed_key=2, claims_per_email_per_day=1
    )
    try:
        key = svc.from_ip("192.0.2.9").call(keys.create).key
        svc.from_ip("192.0.2.9").call(keys.create)
        with pytest.raises(ServiceError) as caught:
            svc.from_ip("192.0.2.9").call(keys.create)
        assert caught.value.code == 429
        svc.from_ip("192.0.2.10").call(keys.create)  # another address is not affected
        clock.now += timedelta(hours=1, seconds=1)
        svc.from_ip("192.0.2.9").call(keys.create)  # the hour has passed

        svc.call(domains.add, key, "a.example")
        svc.call(domains.add, key, "b.example")
        with pytest.raises(ServiceError) as caught:
            svc.call(domains.add, key, "c.example")
        assert caught.value.code == 403 and "confirmed" in caught.value.text

        svc.call(accounts.claim, key, "x@example.org")
        other = svc.from_ip("192.0.2.11").call(keys.create).key
        with pytest.raises(ServiceError) as caught:
            svc.call(accounts.claim, other, "x@example.org")
        assert caught.value.code == 429
    finally:
        svc.db.dispose()


def test_batch_rolls_back_only_the_refused_call(svc: Keychest) -> None:
    key = svc.call(keys.create).key
    results = svc.call_batch(
        [
            Call(domains.add, (key, "a.example")),
            Call(domains.add, (key, "*.bad.example")),
            Call(domains.add, (key, "b.example")),
        ]
    )
    assert isinstance(results[1], ServiceError) and results[1].code == 422
    assert [r.domain for r in svc.read(domains.list_rows)] == ["a.example", "b.example"]


def test_audit_records_key_events_with_source(svc: Keychest) -> None:
    key = svc.from_ip("198.51.100.7").call(keys.create).key
    svc.from_ip("198.51.100.7").call(accounts.claim, key, "owner@example.org")
    svc.from_ip("198.51.100.8").call(domains.add, key, "www.example.net")
    events = [(e.event, e.ip) for e in reversed(svc.read(audit.recent))]
    assert events == [
        ("key_created", "198.51.100.7"),
        ("mail_confirm_account", "198.51.100.7"),
        ("claim", "198.51.100.7"),
        ("domain_added", "198.51.100.8"),
    ]


def test_bulk_add_means_the_same_as_one_by_one(db_url: str, clock: Clock) -> None:
    svc = make_service(db_url, clock, domains_per_unconfirmed_key=3)
    try:
        key = svc.call(keys.create).key
        other = svc.call(keys.create).key
        svc.call(domains.add, key, "old.example")
        results = svc.call_batch(
            [
                Call(domains.add, (key, "a.example"), "192.0.2.1"),
                Call(domains.add, (key, "A.example."), "192.0.2.1"),
                Call(domains.add, (key, "*.bad.example"), "192.0.2.1"),
                Call(domains.add, ("unknown-key-0000000", "x.example"), "192.0.2.1"),
                Call(domains.add, (key, "old.example"), "192.0.2.1"),
                Call(domains.add, (key, "b.example"), "192.0.2.1"),
                Call(domains.add, (key, "c.example"), "192.0.2.1"),
                Call(domains.add, (other, "a.example"), "192.0.2.2"),
            ]
        )
        first, again, wildcard, unknown, old, b, over_quota, by_other = results
        assert first.created and not again.created and again.watch_id == first.watch_id
        assert isinstance(wildcard, ServiceError) and wildcard.code == 422
        assert isinstance(unknown, ServiceError) and unknown.code == 401
        assert not old.created
        assert b.created
        assert isinstance(over_quota, ServiceError) and over_quota.code == 403
        # Another key shares the endpoint, not the watch.
        assert by_other.created and by_other.endpoint_id == first.endpoint_id
        listed = sorted((r.domain, r.apikey_prefix) for r in svc.read(domains.list_rows))
        assert listed == sorted(
            [
                ("old.example", key[:8]),
                ("a.example", key[:8]),
                ("b.example", key[:8]),
                ("a.example", other[:8]),
            ]
        )
    finally:
        svc.db.dispose()


def test_bulk_key_creation_respects_the_hourly_quota(db_url: str, clock: Clock) -> None:
    svc = make_service(db_url, clock, keys_per_ip_per_hour=2)
    try:
        results = svc.call_batch([Call(keys.create, (), "192.0.2.1") for _ in range(3)])
        assert [isinstance(r, ServiceError) for r in results] == [False, False, True]
        assert len({r.key for r in results[:2]}) == 2
    finally:
        svc.db.dispose()
