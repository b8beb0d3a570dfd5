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


def test_calendar_counts_self_signed_and_private_ca_certificates_as_one_issuer_each(
    db_url: str, tmp_path: Path
) -> None:
    """Issue 17 item 4: not one legend entry per self-signed certificate (each names itself)."""
    import trustme

    from tests.scan.certs import ServerCert

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    db = Database(db_url)
    upgrade(db)
    svc = Keychest(db, Settings(db_url, Path("."), "keychest.test"), lambda: now)
    certs = CertFactory(tmp_path)
    private = trustme.CA()
    served = {
        "public.example.net": (certs.valid("public.example.net", days=40), True),
        "own-a.example.net": (certs.custom("own-a.example.net", self_signed=True, days=40), False),
        "own-b.example.net": (certs.custom("own-b.example.net", self_signed=True, days=70), False),
        "lab.example.net": (
            ServerCert.from_trustme(
                private.issue_cert(
                    "lab.example.net", not_after=now.replace(tzinfo=dt.UTC) + dt.timedelta(days=70)
                )
            ),
            False,
        ),
    }
    try:
        key = svc.call(keys.create).key
        claimed = svc.call(accounts.claim, key, "calendar@example.org")
        svc.call(accounts.confirm, claimed.account_id, claimed.api_key_id)
        for host, (leaf, trusted) in served.items():
            der = x509.load_pem_x509_certificates(leaf.chain_pem)[0].public_bytes(Encoding.DER)
            verdict = Verdict(
                State.OK if trusted else State.ERROR,
                days_left=40,
                trusted=trusted,
                trust_error=None if trusted else "unable to get local issuer certificate",
                hostname_ok=True,
            )
            result = AddressResult(
                Endpoint(host),
                "192.0.2.1",
                now.replace(tzinfo=dt.UTC),
                chain=(cert_facts(der),),
                verdict=verdict,
            )
            endpoint_id = svc.call(domains.add, key, host).endpoint_id
            svc.call(scans.record, endpoint_id, [result], interval_s=3600)

        calendar = svc.read(lambda ctx: overview.calendar(ctx, claimed.account_id))
    finally:
        db.dispose()

    assert sorted(calendar.issuers) == sorted(["Keychest Test CA", overview.SELF_SIGNED, overview.PRIVATE_CA])
    totals: dict[str, int] = {}
    for month in calendar.counts:
        for issuer, count in month.items():
            totals[issuer] = totals.get(issuer, 0) + count
    assert totals == {"Keychest Test CA": 1, overview.SELF_SIGNED: 2, overview.PRIVATE_CA: 1}
