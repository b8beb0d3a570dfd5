"""The one visibility rule: which endpoints an API key or an account sees.

An account sees the endpoints registered with its approved (``active``) keys. A key sees its
account's endpoints once it is approved itself; until then (or without an account) only the
ones it registered. Every query that scopes data to a caller is built from these SELECTs, as
subqueries (never Python lists), so the rule is written here once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

from sqlalchemy import ColumnElement, Select, select

from keychest.service import domains, errors, keys
from keychest.service.context import Ctx
from keychest.states import KeyState
from keychest.store.models import ApiKey, Endpoint, Watch


def _approved(account: ColumnElement[bool]) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return account, ApiKey.state == KeyState.ACTIVE


def account_keys(account_id: int) -> Select[int]:
    """The ids of the keys whose registrations an account sees: its approved ones."""
    return select(ApiKey.id).where(*_approved(ApiKey.account_id == account_id))


def key_scope(key: ApiKey) -> Select[int]:
    """The ids of the keys whose registrations a key sees: its account's approved keys once it
    is approved itself, else itself alone."""
    if key.account_id is not None and key.state == KeyState.ACTIVE:
        return account_keys(key.account_id)
    return select(ApiKey.id).where(ApiKey.id == key.id)


def account_endpoints(account_id: int) -> Select[int]:
    """The ids of the endpoints an account sees."""
    return (
        select(Watch.endpoint_id)
        .join(ApiKey, ApiKey.id == Watch.api_key_id)
        .where(*_approved(ApiKey.account_id == account_id))
        .distinct()
    )


def key_endpoints(key: ApiKey) -> Select[int]:
    """The ids of the endpoints a key sees."""
    if key.account_id is not None and key.state == KeyState.ACTIVE:
        return account_endpoints(key.account_id)
    return select(Watch.endpoint_id).where(Watch.api_key_id == key.id).distinct()


def endpoints_by_account(ctx: Ctx, account_ids: Collection[int]) -> dict[int, list[int]]:
    """The endpoint ids each of many accounts sees (one query for the alert and weekly passes);
    an account that sees none is left out."""
    mapping: dict[int, set[int]] = defaultdict(set)
    if account_ids:
        rows = ctx.session.execute(
            select(ApiKey.account_id, Watch.endpoint_id)
            .join(Watch, Watch.api_key_id == ApiKey.id)
            .where(*_approved(ApiKey.account_id.in_(account_ids)))
        )
        for account_id, endpoint_id in rows:
            if account_id is not None:  # always, by the filter: for the type
                mapping[account_id].add(endpoint_id)
    return {account_id: sorted(ids) for account_id, ids in mapping.items()}


def key_endpoint(ctx: Ctx, raw_key: str, domain_text: str) -> Endpoint:
    """The endpoint of a domain the key sees; 404 for any other, registered or not (a key
    learns nothing about other accounts' domains)."""
    key = keys.use(ctx, raw_key)
    name = domains.parse_domain(domain_text)
    endpoint = ctx.session.scalar(
        select(Endpoint).where(
            Endpoint.host == name.host,
            Endpoint.port == name.port,
            Endpoint.id.in_(key_endpoints(key)),
        )
    )
    if endpoint is None:
        raise errors.not_found(f"{name} is not registered for this key")
    return endpoint


def account_endpoint(ctx: Ctx, account_id: int, endpoint_id: int) -> Endpoint | None:
    """The endpoint, if the account sees it."""
    return ctx.session.scalar(
        select(Endpoint).where(Endpoint.id == endpoint_id, Endpoint.id.in_(account_endpoints(account_id)))
    )
