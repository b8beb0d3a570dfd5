"""Storing scan results: latest state per address, history only on change."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from keychest.config import Settings
from keychest.scan.errors import ErrorKind, ScanError
from keychest.scan.judge import State, Verdict, cert_facts
from keychest.scan.runner import AddressResult
from keychest.scan.targets import Endpoint
from keychest.service import domains, keys, scans
from keychest.service.errors import ServiceError
from keychest.service.facade import Call, Keychest
from keychest.store.db import Database, upgrade
from keychest.store.models import Certificate, ScanChange
from keychest.store.models import Endpoint as EndpointRow
from tests.scan.certs import CertFactory

NOW = dt.datetime(2026, 11, 26, 12, 0, 0)


@pytest.fixture
def svc(db_url: str) -> Iterator[Keychest]:
    db = Database(db_url)
    upgrade(db)
    clock = {"now": NOW}
    service = Keychest(db, Settings(db_url, Path("."), "keychest.test"), lambda: clock["now"])
    service.clock_state = clock  # type: ignore[attr-defined]
    yield service
    db.dispose()


def served(cert_pem: bytes, ip: str = "192.0.2.1") -> AddressResult:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificates(cert_pem)[0].public_bytes(Encoding.DER)
    verdict = Verdict(State.OK, days_left=60, trusted=True, trust_error=None, hostname_ok=True)
    return AddressResult(
        Endpoint("www.example.net"), ip, NOW.replace(tzinfo=dt.UTC), chain=(cert_facts(der),), verdict=verdict
    )


def down(ip: str = "192.0.2.1") -> AddressResult:
    error = ScanError(ErrorKind.REFUSED, "connection refused")
    return AddressResult(Endpoint("www.example.net"), ip, NOW.replace(tzinfo=dt.UTC), error=error)


def history(svc: Keychest) -> list[tuple[str, str | None, str | None]]:
    def load(ctx):  # type: ignore[no-untyped-def]
        sha = dict(ctx.session.execute(select(Certificate.id, Certificate.sha256)).all())
        rows = ctx.session.scalars(select(ScanChange).order_by(ScanChange.id))
        return [(r.change, sha.get(r.certificate_id), sha.get(r.previous_certificate_id)) for r in rows]

    return svc.read(load)


def test_history_only_on_change_and_a_renewal_hidden_by_an_outage_is_seen(
    svc: Keychest, tmp_path: Path
) -> None:
    certs = CertFactory(tmp_path)
    old, new = certs.valid("www.example.net"), certs.valid("www.example.net")
    old_sha = cert_facts_sha(old.chain_pem)
    new_sha = cert_facts_sha(new.chain_pem)
    key = svc.call(keys.create).key
    endpoint_id = svc.call(domains.add, key, "www.example.net").endpoint_id

    def scan(result: AddressResult) -> tuple[str, ...]:
        return svc.call(scans.record, endpoint_id, [result], interval_s=3600).changes

    assert scan(served(old.chain_pem)) == ("first_seen",)
    assert scan(served(old.chain_pem)) == ()  # nothing changed: no history row
    assert scan(down()) == ("error",)
    assert scan(down()) == ()
    # The server came back with its renewed certificate: both facts are in the history.
    assert scan(served(new.chain_pem)) == ("recovered", "new_certificate")
    assert history(svc) == [
        ("first_seen", old_sha, None),
        ("error", None, old_sha),
        ("recovered", new_sha, None),
        ("new_certificate", new_sha, old_sha),
    ]
    # An outage that ends with the same certificate is only a recovery.
    assert scan(down()) == ("error",)
    assert scan(served(new.chain_pem)) == ("recovered",)


def cert_facts_sha(chain_pem: bytes) -> str:
    return served(chain_pem).chain[0].sha256


# --- rescans -------------------------------------------------------------------------------------


def _endpoint(svc: Keychest, endpoint_id: int) -> EndpointRow:
    return svc.read(lambda ctx: ctx.session.get(EndpointRow, endpoint_id))


def _at(svc: Keychest, moment: dt.datetime) -> None:
    svc.clock_state["now"] = moment  # type: ignore[attr-defined]


def test_re_add_schedules_a_scan_unless_scanned_in_the_last_minute(svc: Keychest, tmp_path: Path) -> None:
    certs = CertFactory(tmp_path)
    key = svc.call(keys.create).key
    first = svc.call(domains.add, key, "www.example.net")
    assert first.created and not first.scan_scheduled
    svc.call(
        scans.record, first.endpoint_id, [served(certs.valid("www.example.net").chain_pem)], interval_s=3600
    )
    assert _endpoint(svc, first.endpoint_id).next_scan_at == NOW + dt.timedelta(hours=1)

    _at(svc, NOW + dt.timedelta(seconds=59))
    again = svc.call(domains.add, key, "www.example.net")
    assert not again.created and not again.scan_scheduled
    assert _endpoint(svc, first.endpoint_id).next_scan_at == NOW + dt.timedelta(hours=1)

    later = NOW + dt.timedelta(seconds=61)
    _at(svc, later)
    again = svc.call(domains.add, key, "www.example.net")
    assert not again.created and again.scan_scheduled
    due = _endpoint(svc, first.endpoint_id).next_scan_at
    assert due == later + dt.timedelta(seconds=scans.RESCAN_AFTER_ADD_S)
    # Asked again before that scan ran: still scheduled, and not postponed.
    _at(svc, later + dt.timedelta(seconds=2))
    assert svc.call(domains.add, key, "www.example.net").scan_scheduled
    assert _endpoint(svc, first.endpoint_id).next_scan_at == due


def test_re_adds_in_one_batch_go_through_the_bulk_path(svc: Keychest) -> None:
    key = svc.call(keys.create).key
    names = [f"n{i}.example.net" for i in range(5)]
    ids = [svc.call(domains.add, key, name).endpoint_id for name in names]
    # Never scanned: due already, so a re-add reports the scan that is coming anyway.
    batch = [Call(domains.add, (key, name)) for name in names] + [Call(domains.add, (key, "new.example.net"))]
    outcomes = svc.call_batch(batch)
    assert [o.scan_scheduled for o in outcomes] == [True] * 5 + [False]
    assert outcomes[-1].created
    assert all(_endpoint(svc, i).next_scan_at == NOW for i in ids)


def test_request_rescan_by_key_sees_only_its_own_domains(svc: Keychest, tmp_path: Path) -> None:
    certs = CertFactory(tmp_path)
    mine, theirs = svc.call(keys.create).key, svc.call(keys.create).key
    endpoint_id = svc.call(domains.add, mine, "www.example.net").endpoint_id
    svc.call(domains.add, theirs, "other.example.net")
    svc.call(scans.record, endpoint_id, [served(certs.valid("www.example.net").chain_pem)], interval_s=3600)
    _at(svc, NOW + dt.timedelta(minutes=1))
    asked = svc.call(scans.request_rescan, mine, "WWW.example.net.")
    assert asked.domain == "www.example.net" and asked.endpoint_id == endpoint_id
    assert asked.due_at == NOW + dt.timedelta(minutes=1) and asked.last_scan_at == NOW
    assert _endpoint(svc, endpoint_id).next_scan_at == NOW + dt.timedelta(minutes=1)
    for key, name in (
        (theirs, "www.example.net"),
        (mine, "other.example.net"),
        (mine, "nowhere.example.net"),
    ):
        with pytest.raises(ServiceError) as refused:
            svc.call(scans.request_rescan, key, name)
        assert refused.value.code == 404
    with pytest.raises(ServiceError) as unknown:
        svc.call(scans.request_rescan, "0" * 40, "www.example.net")
    assert unknown.value.code == 401


def test_rescan_asked_during_a_scan_survives_that_scans_record(svc: Keychest, tmp_path: Path) -> None:
    certs = CertFactory(tmp_path)
    key = svc.call(keys.create).key
    endpoint_id = svc.call(domains.add, key, "www.example.net").endpoint_id
    (leased,) = svc.call(scans.lease_due, owner="a", limit=10, lease_s=300)
    assert leased.id == endpoint_id
    svc.call(scans.request_rescan, key, "www.example.net")  # while "a" scans it
    svc.call(
        scans.record,
        endpoint_id,
        [served(certs.valid("www.example.net").chain_pem)],
        interval_s=3600,
        owner="a",
    )
    endpoint = _endpoint(svc, endpoint_id)
    assert endpoint.next_scan_at == NOW and endpoint.lease_owner is None
    # Without a rescan in between, the next scan is an interval away as before.
    (leased,) = svc.call(scans.lease_due, owner="a", limit=10, lease_s=300)
    svc.call(
        scans.record,
        endpoint_id,
        [served(certs.valid("www.example.net").chain_pem)],
        interval_s=3600,
        owner="a",
    )
    assert _endpoint(svc, endpoint_id).next_scan_at == NOW + dt.timedelta(hours=1)


def test_admin_rescan_by_state_by_name_and_everything(svc: Keychest, tmp_path: Path) -> None:
    certs = CertFactory(tmp_path)
    key = svc.call(keys.create).key
    good = svc.call(domains.add, key, "good.example.net").endpoint_id
    bad = svc.call(domains.add, key, "bad.example.net:8443").endpoint_id
    svc.call(scans.record, good, [served(certs.valid("good.example.net").chain_pem)], interval_s=3600)
    svc.call(scans.record, bad, [down()], interval_s=3600)
    _at(svc, NOW + dt.timedelta(minutes=5))
    soon = NOW + dt.timedelta(minutes=5)

    assert svc.call(lambda ctx: scans.rescan(ctx, state="error")) == scans.RescanReport(1, ())
    assert _endpoint(svc, bad).next_scan_at == soon
    assert _endpoint(svc, good).next_scan_at == NOW + dt.timedelta(hours=1)

    report = svc.call(lambda ctx: scans.rescan(ctx, domain_texts=["good.example.net", "bad.example.net"]))
    assert report == scans.RescanReport(1, ("bad.example.net",))  # port 443 is another endpoint
    assert _endpoint(svc, good).next_scan_at == soon

    _at(svc, NOW + dt.timedelta(minutes=10))
    assert svc.call(lambda ctx: scans.rescan(ctx, everything=True)).marked == 2
    # Due since minute 5 stays due since minute 5: a rescan never postpones.
    assert _endpoint(svc, good).next_scan_at == soon
    for wrong in ({}, {"everything": True, "state": "ok"}, {"state": "pending-ish"}):
        with pytest.raises(ServiceError):
            svc.call(lambda ctx, w=wrong: scans.rescan(ctx, **w))


def blocked(ip: str = "10.0.0.1") -> AddressResult:
    error = ScanError(ErrorKind.BLOCKED, "private address")
    return AddressResult(Endpoint("www.example.net"), ip, NOW.replace(tzinfo=dt.UTC), error=error)


def untrusted(cert_pem: bytes) -> AddressResult:
    result = served(cert_pem)
    verdict = Verdict(State.ERROR, days_left=60, trusted=False, trust_error="unknown CA", hostname_ok=True)
    return AddressResult(result.endpoint, result.ip, result.scanned_at, chain=result.chain, verdict=verdict)


def test_changed_scan_settings_rescan_blocked_and_untrusted_results(svc: Keychest, tmp_path: Path) -> None:
    certs = CertFactory(tmp_path)
    key = svc.call(keys.create).key
    ids = {
        name: svc.call(domains.add, key, f"{name}.example.net").endpoint_id
        for name in ("ok", "bl", "un", "dn")
    }
    svc.call(scans.record, ids["ok"], [served(certs.valid("ok.example.net").chain_pem)], interval_s=3600)
    svc.call(scans.record, ids["bl"], [blocked()], interval_s=3600)
    svc.call(scans.record, ids["un"], [untrusted(certs.valid("un.example.net").chain_pem)], interval_s=3600)
    svc.call(scans.record, ids["dn"], [down()], interval_s=3600)
    later = NOW + dt.timedelta(minutes=3)
    _at(svc, later)

    # The first start of an installation counts as a change.
    assert svc.call(scans.rescan_after_settings_change, "a" * 64) == 2

    def due() -> set[str]:
        return {name for name, i in ids.items() if _endpoint(svc, i).next_scan_at <= later}

    assert due() == {"bl", "un"}
    for name in ("bl", "un"):
        svc.call(scans.record, ids[name], [blocked()], interval_s=3600)
    assert due() == set()
    assert svc.call(scans.rescan_after_settings_change, "a" * 64) is None
    assert due() == set()
    assert svc.call(scans.rescan_after_settings_change, "b" * 64) == 2
    assert due() == {"bl", "un"}
