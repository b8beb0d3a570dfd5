"""Mail incidents clear (issue 12 item 6): an account mailed an ``invalid`` or ``down`` alert
gets one mail when that address is valid / reachable again, and only one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from keychest.client import LineClient
from keychest.notify.alerts import Alert, clearing_key, decide, subject
from keychest.notify.facts import AddressFacts, CertInfo, EndpointFacts
from tests.notify.smtp import SmtpSink
from tests.scan.certs import CertFactory
from tests.scan.tls_servers import DNSServer, TestServers
from tests.support.server import LiveServer, start_server

NOW = datetime(2026, 12, 1, 12, 0)
CERT = CertInfo(7, "0" * 64, "Test CA", NOW - timedelta(days=10), NOW + timedelta(days=80))


def site(*addresses: AddressFacts) -> list[EndpointFacts]:
    return [EndpointFacts(1, "www.example.net", addresses)]


def bad(
    ip: str = "192.0.2.1", state: str = "critical", codes: tuple[str, ...] = ("hostname_mismatch",)
) -> AddressFacts:
    return AddressFacts(ip, state, CERT, problems=codes)


def good(ip: str = "192.0.2.1") -> AddressFacts:
    return AddressFacts(ip, "ok", CERT)


def down(ip: str = "192.0.2.1", since: datetime = NOW - timedelta(hours=2)) -> AddressFacts:
    return AddressFacts(ip, "error", None, "refused", "connection refused", since)


def keys(alerts: list[Alert]) -> list[str]:
    return [a.key for a in alerts]


def sent_after(sent: frozenset[str], alerts: list[Alert]) -> frozenset[str]:
    """What alerting.run_pass records: every alert's key and the keys it covers."""
    return sent | {k for a in alerts for k in (a.key, *a.covers)}


def test_invalid_then_valid_once() -> None:
    [problem] = decide(site(bad()), [], NOW, frozenset())
    assert problem.kind == "invalid"
    sent = sent_after(frozenset(), [problem])
    assert decide(site(bad()), [], NOW, sent) == []
    [cleared] = decide(site(good()), [], NOW, sent)
    assert (cleared.kind, cleared.severity, cleared.key) == ("valid", "ok", f"valid:{problem.key}")
    assert "valid again" in subject([cleared])
    assert decide(site(good()), [], NOW, sent_after(sent, [cleared])) == []


def test_no_clearing_while_a_newer_incident_replaced_it_and_one_when_that_clears() -> None:
    [warning] = decide(site(bad(state="warning")), [], NOW, frozenset())
    sent = sent_after(frozenset(), [warning])
    # Worse: a new invalid alert, no clearing mail for the warning.
    [worse] = decide(site(bad()), [], NOW, sent)
    assert worse.kind == "invalid" and worse.severity == "critical"
    sent = sent_after(sent, [worse])
    assert decide(site(bad()), [], NOW, sent) == []
    # Both incidents of the address clear with one mail.
    [cleared] = decide(site(good()), [], NOW, sent)
    assert cleared.kind == "valid"
    assert {cleared.key, *cleared.covers} == {f"valid:{warning.key}", f"valid:{worse.key}"}
    assert decide(site(good()), [], NOW, sent_after(sent, [cleared])) == []


def test_down_then_recovered_once_per_outage() -> None:
    [outage] = decide(site(down()), [], NOW, frozenset())
    assert outage.kind == "down"
    sent = sent_after(frozenset(), [outage])
    assert decide(site(down()), [], NOW, sent) == []
    [back] = decide(site(good()), [], NOW, sent)
    assert (back.kind, back.key) == ("recovered", f"recovered:{outage.key}")
    sent = sent_after(sent, [back])
    assert decide(site(good()), [], NOW, sent) == []
    # A second outage is a second incident, and clears again.
    later = NOW + timedelta(days=1)
    [second] = decide(site(down(since=later - timedelta(hours=2))), [], later, sent)
    sent = sent_after(sent, [second])
    assert keys(decide(site(good()), [], later, sent)) == [f"recovered:{second.key}"]


def test_only_the_address_that_cleared_and_never_for_a_removed_one() -> None:
    v4, v6 = "192.0.2.1", "2001:db8::1"
    first = decide(site(bad(v4), bad(v6)), [], NOW, frozenset())
    sent = sent_after(frozenset(), first)
    [cleared] = decide(site(bad(v4), good(v6)), [], NOW, sent)
    assert cleared.key == f"valid:invalid:1:{v6}:{CERT.id}:critical:hostname_mismatch"
    # An IPv6 address that is a prefix of another (::1 and ::1:5) is not mistaken for it.
    short = decide(site(bad("2001:db8::1:5")), [], NOW, frozenset())
    assert decide(site(good("2001:db8::1")), [], NOW, sent_after(frozenset(), short)) == []
    # The endpoint left the account (or the address): nothing to say.
    assert decide([], [], NOW, sent) == []


def test_a_down_address_does_not_clear_its_invalid_incident() -> None:
    sent = sent_after(frozenset(), decide(site(bad()), [], NOW, frozenset()))
    assert [a.kind for a in decide(site(down()), [], NOW, sent)] == ["down"]


def test_long_keys_still_fit_the_column() -> None:
    codes = tuple(f"problem_code_number_{i}" for i in range(12))
    [problem] = decide(site(bad(codes=codes)), [], NOW, frozenset())
    [cleared] = decide(site(good()), [], NOW, sent_after(frozenset(), [problem]))
    assert len(cleared.key) <= 200 and cleared.key == clearing_key("valid", problem.key)
    assert decide(site(good()), [], NOW, sent_after(frozenset(), [problem, cleared])) == []


# --- end to end: a real server scanning a real TLS server, mails caught by aiosmtpd ---

PUBLIC = "http://public.kc.test:8080"
HOST = "wrong.clearing.test"
OTHER = "soon.clearing.test"


class World:
    def __init__(self, directory: Path) -> None:
        self.certs = CertFactory(directory)
        now = dt.datetime.now(dt.UTC)
        span = {"not_before": now - dt.timedelta(days=10), "not_after": now + dt.timedelta(days=80)}
        self.wrong = self.certs.issued("someone-else.test", **span)
        self.right = self.certs.issued(HOST, **span)
        soon = self.certs.issued(
            OTHER, not_before=now - dt.timedelta(days=80), not_after=now + dt.timedelta(days=5)
        )
        self.servers = TestServers()
        self.swapping = TestServers()
        self.port = self.swapping.tls(self.wrong.chain_pem, self.wrong.key_pem, hosts=["127.0.0.1"])
        self.other_port = self.servers.tls(soon.chain_pem, soon.key_pem, hosts=["127.0.0.1"])
        self.dns = DNSServer({HOST: ["127.0.0.1"], OTHER: ["127.0.0.1"]})

    def fix(self) -> None:
        """The operator installs the certificate for the right name."""
        self.swapping.close()
        self.swapping = TestServers()
        self.swapping.tls(self.right.chain_pem, self.right.key_pem, hosts=["127.0.0.1"], port=self.port)

    def close(self) -> None:
        self.swapping.close()
        self.servers.close()
        self.dns.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    (tmp_path / "certs").mkdir()
    made = World(tmp_path / "certs")
    yield made
    made.close()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def serve(world: World, sink: SmtpSink, directory: Path, *more: str) -> LiveServer:
    return start_server(
        directory,
        "--allow-private-targets",
        "--ca-file", str(world.certs.ca_file),
        "--resolver", world.dns.address,
        "--scan-interval", "3s",
        "--scan-timeout", "2",
        "--smtp", sink.address,
        "--public-url", PUBLIC,
        *more,
    )  # fmt: skip


@pytest.fixture
def server(world: World, sink: SmtpSink, tmp_path: Path) -> Iterator[LiveServer]:
    live = serve(world, sink, tmp_path / "server")
    yield live
    live.stop()


def confirmed_account(server: LiveServer, sink: SmtpSink, email: str, domain: str) -> None:
    with LineClient("127.0.0.1", server.line_port) as client:
        key = client.request("apikey").data or ""
        assert client.request("add", apikey=key, domain=domain).ok
        assert client.request("claim", apikey=key, email=email).ok
    mail = sink.wait_to(email, subject="Confirm your keychest account")
    url = sink.links(mail, "/confirm/")[0].removeprefix(PUBLIC)
    assert httpx.post(server.http_url + url, follow_redirects=False).status_code == 303


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_wrong_name_mailed_then_one_valid_again_mail(
    server: LiveServer, sink: SmtpSink, world: World
) -> None:
    email = "clearing@example.org"
    domain = f"{HOST}:{world.port}"
    confirmed_account(server, sink, email, domain)
    problem = sink.wait_to(email, subject="certificate problem", timeout=30)
    assert "hostname_mismatch" in sink.text(problem)
    world.fix()
    cleared = sink.wait_to(email, subject="certificate valid again", timeout=30)
    assert f"Certificate valid again at 127.0.0.1: {domain}" in sink.text(cleared)
    # A later pass decided on this account again once a newcomer (a higher account id, queued
    # after it) got its own alert: a repeated clearing mail would have reached the sink first.
    confirmed_account(server, sink, "newcomer@example.org", f"{OTHER}:{world.other_port}")
    sink.wait_to("newcomer@example.org", subject="certificate alerts", timeout=30)
    alerts = [str(m["Subject"]) for m in sink.to(email) if "Confirm" not in str(m["Subject"])]
    assert len(alerts) == 2, alerts


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_unacknowledged_critical_mail_repeats_and_its_link_acknowledges(
    world: World, sink: SmtpSink, tmp_path: Path
) -> None:
    """``--renotify 3s``: the problem mail comes again ("Still open"), each with an acknowledge
    link; the link's GET only shows the incident, its POST acknowledges it."""
    live = serve(world, sink, tmp_path / "server", "--renotify", "3s")
    try:
        email = "repeat@example.org"
        domain = f"{HOST}:{world.port}"
        confirmed_account(live, sink, email, domain)
        first = sink.wait_to(email, subject="certificate problem", timeout=30)
        [first_link] = sink.links(first, "/ack/")
        assert "Acknowledge" in sink.text(first) and first_link in sink.html(first)
        again = sink.wait_to(email, subject="still certificate problem", timeout=30)
        assert f"Still open: Certificate problem at 127.0.0.1: {domain}" in sink.text(again)
        [link] = sink.links(again, "/ack/")
        assert link != first_link
        path = link.removeprefix(PUBLIC)
        # The repeat's link replaced the first one.
        assert httpx.get(live.http_url + first_link.removeprefix(PUBLIC)).status_code == 404
        page = httpx.get(live.http_url + path)
        assert page.status_code == 200 and "certificate.invalid" in page.text and "still open" in page.text
        assert f'action="{path}"' in page.text
        # Looking twice acknowledges nothing; the POST does, once.
        assert httpx.get(live.http_url + path).status_code == 200
        done = httpx.post(live.http_url + path)
        assert done.status_code == 200 and "Acknowledged" in done.text
        assert httpx.post(live.http_url + path).status_code == 404
    finally:
        live.stop()
