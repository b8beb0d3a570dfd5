"""The dashboard's incident list, on SQLite and PostgreSQL (they sort NULLs differently)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keychest.config import Settings
from keychest.scan.errors import ErrorKind, ScanError
from keychest.scan.judge import Problem, Severity, State, Verdict, cert_facts
from keychest.scan.runner import AddressResult
from keychest.scan.targets import Endpoint
from keychest.service import accounts, domains, keys, overview, scans
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from tests.scan.certs import CertFactory

NOW = dt.datetime(2026, 12, 1, 12, 0, 0)


@pytest.fixture
def svc(db_url: str) -> Iterator[Keychest]:
    db = Database(db_url)
    upgrade(db)
    yield Keychest(db, Settings(db_url, Path("."), "keychest.test"), lambda: NOW)
    db.dispose()


def _served(certs: CertFactory, host: str, left: dt.timedelta, state: State) -> AddressResult:
    leaf = certs.issued(host, not_before=NOW - dt.timedelta(days=60), not_after=NOW + left)
    der = x509.load_pem_x509_certificates(leaf.chain_pem)[0].public_bytes(Encoding.DER)
    severity = Severity.CRITICAL if state == State.CRITICAL else Severity.WARNING
    verdict = Verdict(
        state,
        days_left=left // dt.timedelta(days=1),
        trusted=True,
        trust_error=None,
        hostname_ok=True,
        problems=(Problem("expires_soon", severity, f"{host} expires soon"),),
    )
    return AddressResult(
        Endpoint(host), "192.0.2.1", NOW.replace(tzinfo=dt.UTC), chain=(cert_facts(der),), verdict=verdict
    )


def _down(host: str) -> AddressResult:
    error = ScanError(ErrorKind.REFUSED, "connection refused")
    return AddressResult(Endpoint(host), "192.0.2.1", NOW.replace(tzinfo=dt.UTC), error=error)


def test_expiring_certificates_come_before_unreachable_names_of_the_same_severity(
    svc: Keychest, tmp_path: Path
) -> None:
    certs = CertFactory(tmp_path)
    key = svc.call(keys.create).key
    claimed = svc.call(accounts.claim, key, "owner@example.org")
    account_id = claimed.account_id
    svc.call(accounts.confirm, account_id, claimed.api_key_id)  # the dashboard shows active keys
    results = {
        "a-down.example.net": _down("a-down.example.net"),
        "b-later.example.net": _served(certs, "b-later.example.net", dt.timedelta(days=20), State.WARNING),
        "c-soon.example.net": _served(certs, "c-soon.example.net", dt.timedelta(days=3), State.CRITICAL),
        "d-sooner.example.net": _served(certs, "d-sooner.example.net", dt.timedelta(hours=5), State.CRITICAL),
        "e-fine.example.net": _served(certs, "e-fine.example.net", dt.timedelta(days=80), State.OK),
    }
    for host, result in results.items():
        endpoint_id = svc.call(domains.add, key, host).endpoint_id
        svc.call(scans.record, endpoint_id, [result], interval_s=3600)

    found, total = svc.read(lambda ctx: overview.incidents(ctx, account_id))

    assert total == 4
    # A failed scan is critical, as in `keychest scan`; within critical, what expires first
    # leads and the unreachable name (no certificate) follows; then the warnings.
    assert [(i.domain, i.state) for i in found] == [
        ("d-sooner.example.net", "critical"),
        ("c-soon.example.net", "critical"),
        ("a-down.example.net", "error"),
        ("b-later.example.net", "warning"),
    ]
