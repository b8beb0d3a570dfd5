"""RDAP registration expiry kept with the endpoint (issue 14 item 7) and shown on /metrics:
a real scan against a real TLS server and the local RDAP server of tests/scan/test_rdap.py."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from keychest.config import NotifySettings, Settings
from keychest.notify import signing
from keychest.scan.model import AddressResult, ScanOptions
from keychest.scan.runner import Scanner
from keychest.scan.targets import parse_endpoint, parse_resolve
from keychest.service import accounts, alerting, domains, incidents, keys, overview, scans
from keychest.service.facade import Keychest
from keychest.service.metrics import registration_expiries
from keychest.store.db import Database, upgrade
from keychest.store.models import Endpoint as EndpointRow
from keychest.store.models import OutboxMail
from keychest.web.metrics import ScanResultsCollector
from tests.notify.receiver import receiver
from tests.notify.test_channels import drain, make_service, verified
from tests.scan.certs import CertFactory
from tests.scan.test_rdap import NOW, RdapServer
from tests.scan.tls_servers import TestServers


@pytest.fixture(scope="module")
def rdap_server() -> Iterator[RdapServer]:
    server = RdapServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[TestServers]:
    with TestServers() as running:
        yield running


@pytest.fixture
def certs(tmp_path: Path) -> CertFactory:
    return CertFactory(tmp_path)


@pytest.fixture
def svc(db_url: str) -> Iterator[Keychest]:
    db = Database(db_url)
    upgrade(db)
    service = Keychest(db, Settings(db_url, Path("."), "keychest.test"), lambda: NOW.replace(tzinfo=None))
    yield service
    db.dispose()


def _scan(
    names: list[str], port: int, certs: CertFactory, rdap_server: RdapServer
) -> list[list[AddressResult]]:
    options = ScanOptions(
        timeout=5,
        ca_file=str(certs.ca_file),
        allow_private_targets=True,
        old_protocols=False,
        revocation=False,
        rdap=True,
        rdap_bootstrap=f"{rdap_server.base}/bootstrap.json",
        resolve=tuple(parse_resolve(f"{name}:{port}:127.0.0.1") for name in names),
    )
    endpoints = [parse_endpoint(f"{name}:{port}") for name in names]
    return asyncio.run(Scanner(options).scan_grouped(endpoints))


def test_registration_expiry_stored_and_on_metrics(
    svc: Keychest, rdap_server: RdapServer, servers: TestServers, certs: CertFactory
) -> None:
    names = ["www.example.test", "mail.example.test", "www.moved.test"]
    cert = certs.valid(*names)
    port = servers.tls(cert.chain_pem, cert.key_pem, hosts=["127.0.0.1"])
    issued = svc.call(keys.create)
    key = issued.key
    ids = [svc.call(domains.add, key, f"{name}:{port}").endpoint_id for name in names]
    for endpoint_id, results in zip(ids, _scan(names, port, certs, rdap_server), strict=True):
        svc.call(scans.record, endpoint_id, results, interval_s=3600)

    def stored(ctx):  # type: ignore[no-untyped-def]
        return {
            ctx.session.get(EndpointRow, i).host: ctx.session.get(EndpointRow, i).registration_expires
            for i in ids
        }

    soon = (NOW + dt.timedelta(days=20, hours=12)).replace(tzinfo=None, microsecond=0)
    later = (NOW + dt.timedelta(days=400)).replace(tzinfo=None, microsecond=0)
    assert svc.read(stored) == {"www.example.test": soon, "mail.example.test": soon, "www.moved.test": later}
    # One series per registrable domain; by default only those within --warn-days.
    assert svc.read(registration_expiries) == {"example.test": soon, "moved.test": later}
    assert svc.read(registration_expiries, everything=False) == {"example.test": soon}
    gauges = {
        tuple(sample.labels.values()): sample.value
        for family in ScanResultsCollector(svc).collect()
        if family.name == "keychest_domain_registration_expiry_timestamp_seconds"
        for sample in family.samples
    }
    assert gauges == {("example.test",): soon.replace(tzinfo=dt.UTC).timestamp()}
    # The dashboard's server page reads it from the server's detail.
    claimed = svc.call(accounts.claim, key, "ops@example.org")
    svc.call(accounts.confirm, claimed.account_id, claimed.api_key_id)
    assert svc.read(overview.server_detail, claimed.account_id, ids[0]).registration_expires == soon
    # And the account's mail alert names it: one alert about the domain, with its date.
    assert svc.call(alerting.run_pass).mails == 1
    [mail] = svc.read(
        lambda ctx: list(ctx.session.scalars(select(OutboxMail).where(OutboxMail.kind == "alerts")))
    )
    [alert] = mail.payload["alerts"]
    assert alert["kind"] == "domain_expires_soon", mail.payload
    assert alert["detail"].startswith(f"The domain example.test's registration expires on {soon:%Y-%m-%d}")
    # The problem is on the stored address state, where the alert pass reads problems.
    views = svc.read(scans.address_views, ids[0])
    assert [p.code for view in views for p in view.problems] == ["domain_expires_soon"]


def test_domain_expiry_reaches_the_channels_as_a_domain_event(
    db_url: str, rdap_server: RdapServer, servers: TestServers, certs: CertFactory
) -> None:
    """domain_expires_soon reaches the channels from a real scan's record as a domain.expiring
    event (not certificate.invalid: it is about the registration, not the certificate)."""
    secret = signing.new_secret()
    with receiver() as hook:
        svc = make_service(db_url, NotifySettings(webhook_urls=(hook.url,), webhook_secret=secret))
        name = "www.example.test"
        cert = certs.valid(name)
        port = servers.tls(cert.chain_pem, cert.key_pem, hosts=["127.0.0.1"])
        key = svc.call(keys.create).key
        endpoint_id = svc.call(domains.add, key, f"{name}:{port}").endpoint_id
        [results] = _scan([name], port, certs, rdap_server)
        svc.call(scans.record, endpoint_id, results, interval_s=3600)
        assert svc.call(incidents.run_pass).queued == 1
        drain(svc)
        [payload] = verified(hook, secret, 1)
    assert payload["type"] == "domain.expiring" and payload["certificate"] is None
    assert payload["problems"] == ["domain_expires_soon"] and payload["severity"] == "warning"
    assert payload["endpoint"]["host"] == name and payload["ack_url"] is None
    assert payload["title"].startswith("Domain registration expires in ")
