"""The one visibility rule (service/visibility.py), on every test database: an account sees the
endpoints of its approved keys; a key sees its account's once approved, else only its own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from keychest.config import Settings
from keychest.service import accounts, domains, keys, visibility
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade


@pytest.fixture
def svc(db_url: str) -> Iterator[Keychest]:
    db = Database(db_url)
    upgrade(db)
    settings = Settings(db_url=db_url, data_dir=Path("."), mail_domain="keychest.test")
    yield Keychest(db, settings, lambda: datetime(2026, 12, 1, 12, 0))
    db.dispose()


def key_with(svc: Keychest, *names: str) -> tuple[str, int, list[int]]:
    issued = svc.call(keys.create)
    endpoints = [svc.call(domains.add, issued.key, name).endpoint_id for name in names]
    return issued.key, issued.id, endpoints


def seen_by_key(svc: Keychest, raw_key: str) -> set[int]:
    return set(
        svc.read(lambda ctx: list(ctx.session.scalars(visibility.key_endpoints(keys.use(ctx, raw_key)))))
    )


def seen_by_account(svc: Keychest, account_id: int) -> set[int]:
    return set(svc.read(lambda ctx: list(ctx.session.scalars(visibility.account_endpoints(account_id)))))


def test_keys_and_accounts_see_what_the_rule_says(svc: Keychest) -> None:
    first, _, (a,) = key_with(svc, "a.example.net")
    claimed = svc.call(accounts.claim, first, "ops@example.org")
    account_id = claimed.account_id
    svc.call(accounts.confirm, account_id, claimed.api_key_id)
    second, second_id, (b,) = key_with(svc, "b.example.net")
    assert svc.call(accounts.claim, second, "ops@example.org").outcome == "pending"
    stranger, _, (c,) = key_with(svc, "c.example.net")

    # A pending key sees only its own; the account does not see the pending key's domains.
    assert seen_by_key(svc, second) == {b}
    assert seen_by_account(svc, account_id) == {a}
    assert seen_by_key(svc, first) == {a}
    assert seen_by_key(svc, stranger) == {c}

    svc.call(keys.approve, second_id)
    assert seen_by_key(svc, second) == seen_by_key(svc, first) == seen_by_account(svc, account_id) == {a, b}
    assert svc.read(visibility.endpoints_by_account, [account_id, 999]) == {account_id: sorted([a, b])}

    svc.call(keys.revoke, second_id)
    assert seen_by_account(svc, account_id) == {a}
    assert svc.read(visibility.account_endpoint, account_id, b) is None


def test_a_key_is_told_not_found_for_a_domain_it_does_not_see(svc: Keychest) -> None:
    mine, _, (a,) = key_with(svc, "mine.example.net")
    key_with(svc, "theirs.example.net")
    assert svc.read(visibility.key_endpoint, mine, "mine.example.net").id == a
    for name in ("theirs.example.net", "nobody.example.net"):
        with pytest.raises(ServiceError) as refused:
            svc.read(visibility.key_endpoint, mine, name)
        assert refused.value.code == 404 and "not registered for this key" in refused.value.text
