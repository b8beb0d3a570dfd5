"""earliest_not_after is stored per address and used by /metrics' earliest expiry, so an
intermediate that expires before the leaf is what the metrics show (issue 14 item 5)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from sqlalchemy import select

from keychest.scan.targets import Endpoint
from keychest.service import domains, keys, metrics, scans
from keychest.service.facade import Keychest
from keychest.store.models import AddressState
from tests.scan.certs import CertFactory

from .test_scans import NOW, served, svc  # noqa: F401 (svc is a fixture)


def test_earliest_expiry_is_stored_and_drives_the_metric(svc: Keychest, tmp_path: Path) -> None:  # noqa: F811
    certs = CertFactory(tmp_path)
    leaf = certs.valid("www.example.net", days=60)
    key = svc.call(keys.create).key
    endpoint_id = svc.call(domains.add, key, "www.example.net").endpoint_id
    result = served(leaf.chain_pem)
    assert result.endpoint == Endpoint("www.example.net")
    leaf_not_after = result.chain[0].not_after
    intermediate_not_after = (NOW + dt.timedelta(days=10)).replace(tzinfo=dt.UTC, microsecond=0)
    assert result.verdict is not None
    verdict = dataclasses.replace(
        result.verdict, earliest_not_after=intermediate_not_after, earliest_days_left=10
    )
    svc.call(scans.record, endpoint_id, [dataclasses.replace(result, verdict=verdict)], interval_s=3600)

    stored = svc.read(lambda ctx: ctx.session.scalar(select(AddressState.earliest_not_after)))
    assert stored == intermediate_not_after.replace(tzinfo=None)
    aggregates = svc.read(metrics.metric_aggregates)
    earliest = aggregates.earliest_expiry
    assert earliest is not None
    assert earliest.replace(tzinfo=None) == intermediate_not_after.replace(tzinfo=None)
    assert earliest.replace(tzinfo=None) < leaf_not_after.replace(tzinfo=None)

    # A row without it (scanned before the column existed) falls back to the leaf's.
    svc.call(scans.record, endpoint_id, [result], interval_s=3600)
    aggregates = svc.read(metrics.metric_aggregates)
    assert aggregates.earliest_expiry is not None
    assert aggregates.earliest_expiry.replace(tzinfo=None) == leaf_not_after.replace(tzinfo=None)


def test_servers_page_sorts_by_the_earliest_expiry(svc: Keychest, tmp_path: Path) -> None:  # noqa: F811
    from keychest.service import accounts, overview

    certs = CertFactory(tmp_path)
    key = svc.call(keys.create).key
    claimed = svc.call(accounts.claim, key, "owner@example.org")
    svc.call(accounts.confirm, claimed.account_id, claimed.api_key_id)
    long_leaf = svc.call(domains.add, key, "long.example.net").endpoint_id
    short_leaf = svc.call(domains.add, key, "short.example.net").endpoint_id
    far = served(certs.valid("long.example.net", days=60).chain_pem)
    assert far.verdict is not None
    # 60-day leaf under an intermediate that expires in 10 days...
    soon = (NOW + dt.timedelta(days=10)).replace(tzinfo=dt.UTC)
    far = dataclasses.replace(
        far,
        endpoint=Endpoint("long.example.net"),
        verdict=dataclasses.replace(far.verdict, earliest_not_after=soon, earliest_days_left=10),
    )
    svc.call(scans.record, long_leaf, [far], interval_s=3600)
    # ...sorts before a plain 30-day leaf.
    near = served(certs.valid("short.example.net", days=30).chain_pem)
    svc.call(scans.record, short_leaf, [dataclasses.replace(near, endpoint=Endpoint("short.example.net"))],
             interval_s=3600)  # fmt: skip
    page = svc.read(lambda ctx: overview.servers_page(ctx, claimed.account_id, sort="expiry"))
    assert [line.domain for line in page.rows][:2] == ["long.example.net", "short.example.net"]
