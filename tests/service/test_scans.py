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
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from keychest.store.models import Certificate, ScanChange
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
        return [
            (r.change, sha.get(r.certificate_id), sha.get(r.previous_certificate_id))
            for r in rows
        ]

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
