"""Alerts and weekly reports from real scans: trustme certificates served on loopback, a live
`keychest serve` scanning them, mails caught by a real SMTP server."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keychest.client import LineClient
from tests.notify.smtp import SmtpSink
from tests.scan.certs import CertFactory, ServerCert
from tests.scan.tls_servers import DNSServer, TestServers, free_port
from tests.support.server import KEYCHEST, LiveServer, start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

NAMES = ["five", "soon", "later", "fine", "renewed", "broken"]
PUBLIC = "http://public.kc.test:8080"


class World:
    """The TLS servers, DNS names and certificates every test of this module shares."""

    def __init__(self, directory: Path) -> None:
        self.certs = CertFactory(directory)
        self.servers = TestServers()
        self.renewing = TestServers()
        self.ports: dict[str, int] = {}
        now = dt.datetime.now(dt.UTC)

        def issued(name: str, days_ago: float, days_left: float) -> ServerCert:
            return self.certs.issued(
                self.host(name),
                not_before=now - dt.timedelta(days=days_ago),
                not_after=now + dt.timedelta(days=days_left),
            )

        for name, (ago, left) in {
            "five": (80, 5),
            "soon": (87, 3),
            "later": (70, 20),
            "fine": (10, 80),
        }.items():
            cert = issued(name, ago, left)
            self.ports[name] = self.servers.tls(cert.chain_pem, cert.key_pem, hosts=["127.0.0.1"])
        self.old = issued("renewed", 80, 10)
        self.new = issued("renewed", 1, 89)
        self.ports["renewed"] = self.renewing.tls(self.old.chain_pem, self.old.key_pem, hosts=["127.0.0.1"])
        self.ports["broken"] = free_port(["127.0.0.1"])  # nothing listens: connection refused
        self.dns = DNSServer({self.host(name): ["127.0.0.1"] for name in NAMES})

    @staticmethod
    def host(name: str) -> str:
        return f"{name}.alerts.test"

    def domain(self, name: str) -> str:
        return f"{self.host(name)}:{self.ports[name]}"

    def renew(self) -> None:
        """The renewed site gets its new certificate (a certbot deploy hook reloading the server)."""
        port = self.ports["renewed"]
        self.renewing.close()
        self.renewing = TestServers()
        self.renewing.tls(self.new.chain_pem, self.new.key_pem, hosts=["127.0.0.1"], port=port)

    def close(self) -> None:
        self.renewing.close()
        self.servers.close()
        self.dns.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = World(Path(tmp_path_factory.mktemp("alert-certs")))
    yield made
    made.close()


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture(scope="module")
def server(world: World, sink: SmtpSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(
        Path(tmp_path_factory.mktemp("alerts")),
        "--allow-private-targets",
        "--ca-file", str(world.certs.ca_file),
        "--resolver", world.dns.address,
        "--scan-interval", "3s",
        "--scan-timeout", "2",
        "--smtp", sink.address,
        "--public-url", PUBLIC,
    )  # fmt: skip
    yield live
    live.stop()


def confirmed_account(server: LiveServer, sink: SmtpSink, email: str, *domains: str) -> str:
    """Domains registered first, then the claim and the confirmation link, as a new user does."""
    with LineClient("127.0.0.1", server.line_port) as client:
        key = client.request("apikey").data or ""
        for domain in domains:
            assert client.request("add", apikey=key, domain=domain).ok
        assert client.request("claim", apikey=key, email=email).ok
    mail = sink.wait_to(email, subject="Confirm your keychest account")
    url = sink.links(mail, "/confirm/")[0].removeprefix(PUBLIC)
    assert httpx.post(server.http_url + url, follow_redirects=False).status_code == 303
    return key


def facts(server: LiveServer, key: str, domain: str) -> dict[str, str]:
    with LineClient("127.0.0.1", server.line_port) as client:
        reply = client.request("expiration", apikey=key, domain=domain)
    assert reply.ok, reply
    return dict(item.split("=", 1) for item in (reply.data or "").split())


def wait_until(check, timeout: float = 30, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        time.sleep(0.2)


def alert_for_newcomer(server: LiveServer, sink: SmtpSink, world: World, email: str) -> None:
    confirmed_account(server, sink, email, world.domain("five"))
    sink.wait_to(email, subject="certificate alert", timeout=30)


def test_five_days_left_yields_exactly_one_warning_even_across_a_restart(
    server: LiveServer, sink: SmtpSink, world: World
) -> None:
    email = "five@example.org"
    confirmed_account(server, sink, email, world.domain("five"))
    mail = sink.wait_to(email, subject="certificate alert", timeout=30)
    text = sink.text(mail)
    # Made with 5 days left, seen seconds later: days_left rounds down (issue 11 item 7).
    assert "Certificate expires in 4 days: " + world.domain("five") in text
    assert "Renewal overdue" in text  # found in the same pass: bundled in the one mail
    assert mail["List-Unsubscribe"].startswith(f"<{PUBLIC}/unsubscribe/")
    # Later alert passes, before and after a restart, must not repeat it. A pass decides for
    # every account in one transaction, queueing in account order: once a newcomer watching the
    # same certificate got its alert, a pass has decided on this account again, and any repeat
    # would be in the outbox and, queued before the newcomer's, in the sink.
    alert_for_newcomer(server, sink, world, "five-before@example.org")
    server.stop()
    server.start()
    alert_for_newcomer(server, sink, world, "five-after@example.org")
    alerts = [m for m in sink.to(email) if "Confirm" not in str(m["Subject"])]
    assert len(alerts) == 1, [str(m["Subject"]) for m in alerts]
    rows = [m for m in json.loads(server.cli("outbox", "--json").stdout) if m["to"] == email]
    assert sorted((m["kind"], m["state"]) for m in rows) == [("alerts", "sent"), ("confirm_account", "sent")]


def test_weekly_report_now_lists_what_expires_and_what_was_renewed(
    server: LiveServer, sink: SmtpSink, world: World
) -> None:
    email = "weekly@example.org"
    names = ["soon", "later", "fine", "renewed", "broken"]
    key = confirmed_account(server, sink, email, *(world.domain(n) for n in names))
    for name in names:
        wait_until(
            lambda n=name: facts(server, key, world.domain(n))["state"] != "pending", what=f"{name} scanned"
        )
    assert int(facts(server, key, world.domain("renewed"))["days_left"]) < 11
    world.renew()
    wait_until(
        lambda: int(facts(server, key, world.domain("renewed"))["days_left"]) > 80, what="renewal seen"
    )
    result = subprocess.run(
        [*KEYCHEST, "report", "weekly", "--db", server.db_url, "--email", email, "--now", "--json",
         "--smtp", sink.address, "--mail-domain", "keychest.test", "--public-url", PUBLIC],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["reports"] == [{"email": email, "period": None, "queued": True, "reason": "queued"}]
    # The command drains the outbox, but the live server's own mailer (same database, same
    # SMTP) may lease the row first: which of the two sends it is not the contract, that it
    # arrives is (below).
    assert outcome["sent"] in (0, 1)
    mail = sink.wait_to(email, subject="Weekly certificate report")
    subject = str(mail["Subject"])
    assert "1 expiring this week" in subject and "1 expiring within 28 days" in subject
    assert "1 renewed" in subject and "1 with errors" in subject
    text, html = sink.text(mail), sink.html(mail)
    sections = {}
    for block in text.split("\n\n"):
        heading, _, rest = block.strip().partition(":\n")
        sections[heading] = rest
    assert world.host("soon") in sections["Expiring within 7 days"]
    assert world.host("later") in sections["Expiring within 28 days"]
    assert world.host("renewed") in sections["Renewed this week"]
    assert world.host("broken") in sections["Endpoints with errors"]
    assert world.host("fine") not in text
    # The renewed site is fine now too: listed under renewals, counted among the fine ones.
    assert "2 of 5 endpoints fine" in text and "2 of 5 endpoints fine" in html
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # One-click unsubscribe (RFC 8058), as a mail provider does it; the GET only shows a page.
    unsubscribe = mail["List-Unsubscribe"].strip("<>").removeprefix(PUBLIC)
    assert httpx.get(server.http_url + unsubscribe).status_code == 200
    done = httpx.post(server.http_url + unsubscribe, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and "no more weekly reports" in done.text
    again = subprocess.run(
        [*KEYCHEST, "report", "weekly", "--db", server.db_url, "--now", "--json",
         "--mail-domain", "keychest.test"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    mine = [r for r in json.loads(again.stdout)["reports"] if r["email"] == email]
    assert mine == [{"email": email, "period": None, "queued": False, "reason": "disabled"}]
