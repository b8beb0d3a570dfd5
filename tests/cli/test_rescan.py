"""Rescans end to end: a certificate swapped on a live TLS server is seen within seconds of
`keychest rescan`, of a re-`add` after the last minute, and of a restart with new settings."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keychest.client import LineClient
from keychest.scan.runner import ScanOptions
from keychest.servers.scheduler import settings_fingerprint
from tests.scan.certs import CertFactory
from tests.scan.tls_servers import TestServers
from tests.support.server import LiveServer
from tests.support.swap_tls import SwappableTLS, sha256_of

pytestmark = pytest.mark.timeout(120)

# A rescan is due at once and the scheduler polls every second; scans time out after 3 s here.
RESCAN_WITHIN_S = 5.0


def facts(client: LineClient, key: str, domain: str) -> dict[str, str]:
    reply = client.request("expiration", apikey=key, domain=domain)
    assert reply.ok, reply
    return dict(item.split("=", 1) for item in (reply.data or "").split())


def wait_until(check: Callable[[], object], timeout: float, what: str) -> float:
    """Seconds until ``check`` returns something other than None; fails after ``timeout``."""
    started = time.monotonic()
    while True:
        if check() is not None:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{what} not within {timeout}s"
        time.sleep(0.1)


def showing(client: LineClient, key: str, domain: str, sha256: str) -> Callable[[], dict[str, str] | None]:
    def check() -> dict[str, str] | None:
        found = facts(client, key, domain)
        return found if found.get("sha256") == sha256 else None

    return check


class Setup:
    def __init__(self, server: LiveServer, site: SwappableTLS, certs: CertFactory) -> None:
        self.server, self.site, self.certs = server, site, certs
        self.client = LineClient("127.0.0.1", server.line_port)
        self.domain = f"localhost:{site.port}"
        key = self.client.request("apikey").data
        assert key
        self.key = key
        assert self.client.request("add", apikey=key, domain=self.domain).text == f"added {self.domain}"
        wait_until(showing(self.client, key, self.domain, sha256_of(site.serving)), 15, "first scan")

    def renew(self) -> str:
        """The server deploys a renewed certificate; its SHA-256."""
        renewed = self.certs.valid("localhost")
        self.site.swap(renewed)
        return sha256_of(renewed)

    def scanned_before(self, seconds: float) -> None:
        """Make the last scan look ``seconds`` old (the only way to test the 60 s rule quickly)."""
        db = sqlite3.connect(self.server.db_url.removeprefix("sqlite:///"), timeout=30)
        with db:
            db.execute(
                "UPDATE endpoints SET last_scan_at = datetime(last_scan_at, ?) WHERE port = ?",
                (f"-{seconds} seconds", self.site.port),
            )
        db.close()


@pytest.fixture
def setup(server_factory, tmp_path: Path) -> Iterator[Setup]:  # type: ignore[no-untyped-def]
    certs = CertFactory(tmp_path)
    with TestServers() as servers:
        site = SwappableTLS(servers, certs.valid("localhost"))
        server = server_factory(
            "--allow-private-targets", "--ca-file", str(certs.ca_file), "--scan-interval", "6h"
        )
        state = Setup(server, site, certs)
        try:
            yield state
        finally:
            state.client.close()
            site.close()


def test_rescan_command_sees_a_swapped_certificate_within_seconds(setup: Setup) -> None:
    renewed = setup.renew()
    assert facts(setup.client, setup.key, setup.domain)["sha256"] != renewed  # due in 6 h
    done = setup.server.cli("rescan", setup.domain)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("scan scheduled for 1 endpoint;")
    took = wait_until(showing(setup.client, setup.key, setup.domain, renewed), 15, "rescan")
    print(f"rescan to renewed certificate seen: {took:.2f} s")
    assert took < RESCAN_WITHIN_S, took

    # --all and --state select too; an unknown name is reported and fails the command.
    renewed = setup.renew()
    done = setup.server.cli("rescan", "--state", "ok")
    assert done.returncode == 0 and "for 1 endpoint;" in done.stdout, done
    wait_until(showing(setup.client, setup.key, setup.domain, renewed), 15, "rescan --state ok")
    done = setup.server.cli("rescan", "--all")
    assert done.returncode == 0 and "for 1 endpoint;" in done.stdout, done
    missing = setup.server.cli("rescan", "nowhere.example.net", setup.domain)
    assert missing.returncode == 1
    assert "not monitored: nowhere.example.net" in missing.stderr
    assert "for 1 endpoint;" in missing.stdout


def test_rescan_command_wants_exactly_one_selection(setup: Setup) -> None:
    for args in ((), ("--all", setup.domain), ("--all", "--state", "ok")):
        done = setup.server.cli("rescan", *args)
        assert done.returncode == 2, (args, done)
        assert "exactly one of --all, --state STATE, or DOMAIN" in done.stderr
    bad = setup.server.cli("rescan", "--state", "pending")
    assert bad.returncode == 2 and "pending" in bad.stderr


def test_re_add_after_a_minute_scans_the_renewal_within_seconds(setup: Setup) -> None:
    renewed = setup.renew()
    # Scanned moments ago: the re-add does not make the server shake hands again.
    again = setup.client.request("add", apikey=setup.key, domain=setup.domain)
    assert again.text == f"already monitored {setup.domain}"
    setup.scanned_before(61)
    asked = time.monotonic()
    again = setup.client.request("add", apikey=setup.key, domain=setup.domain)
    assert again.text == f"already monitored {setup.domain}; scan scheduled"
    wait_until(showing(setup.client, setup.key, setup.domain, renewed), 15, "scan after re-add")
    assert time.monotonic() - asked < 10


def test_new_scan_settings_rescan_blocked_results_at_start(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = CertFactory(tmp_path)
    with TestServers() as servers:
        site = SwappableTLS(servers, certs.valid("localhost"))
        domain = f"localhost:{site.port}"
        data = tmp_path / "shared"
        first = server_factory("--ca-file", str(certs.ca_file), "--scan-interval", "6h", data_dir=data)
        with LineClient("127.0.0.1", first.line_port) as client:
            key = client.request("apikey").data or ""
            client.request("add", apikey=key, domain=domain)
            wait_until(lambda: facts(client, key, domain).get("errors") == "blocked" or None, 15, "blocked")
        first.stop()
        # The same database, now allowed to scan loopback: the blocked result is not left for 6 h.
        second = server_factory(
            "--ca-file", str(certs.ca_file), "--scan-interval", "6h", "--allow-private-targets",
            data_dir=data, db_url=first.db_url,
        )  # fmt: skip
        with LineClient("127.0.0.1", second.line_port) as client:
            found = showing(client, key, domain, sha256_of(site.serving))
            wait_until(found, 15, "rescan after the settings changed")
            assert facts(client, key, domain)["state"] == "ok"
        assert "scan settings changed: 1 blocked or untrusted endpoints are scanned again now" in second.log()
        site.close()


def test_settings_fingerprint_follows_what_decides_blocked_and_untrusted(tmp_path: Path) -> None:
    ca, copy, other = tmp_path / "ca.pem", tmp_path / "copy.pem", tmp_path / "other.pem"
    ca.write_bytes(b"one CA")
    copy.write_bytes(b"one CA")
    other.write_bytes(b"another CA")
    base = settings_fingerprint(ScanOptions(ca_file=str(ca)))
    # The file's content counts, not its name; time-outs and thresholds judge nothing of the kind.
    assert settings_fingerprint(ScanOptions(ca_file=str(copy), timeout=3, warn_days=40)) == base
    changed = [
        ScanOptions(ca_file=str(other)),
        ScanOptions(ca_file=str(ca), allow_private_targets=True),
        ScanOptions(ca_file=str(ca), system_trust=False),
        ScanOptions(ca_file=str(ca), resolver="127.0.0.1:53"),
        ScanOptions(),
        ScanOptions(ca_file=str(tmp_path / "missing.pem")),
    ]
    assert len({base, *(settings_fingerprint(options) for options in changed)}) == len(changed) + 1
    ca.write_bytes(b"one CA and a private one")  # a CA added to the same file
    assert settings_fingerprint(ScanOptions(ca_file=str(ca))) != base
