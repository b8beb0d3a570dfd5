"""Accounts by mail, end to end: claims over the line API against a live `keychest serve`,
mails through a real SMTP server, links followed over HTTP."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keychest.client import LineClient
from tests.notify.smtp import SmtpSink
from tests.scan.tls_servers import DNSServer
from tests.support.server import LiveServer, start_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture(scope="module")
def server(sink: SmtpSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # An empty DNS server: the domains registered here are never looked up on the internet.
    with DNSServer({}) as dns:
        live = start_server(
            Path(tmp_path_factory.mktemp("mailflow")),
            "--smtp", sink.address,
            "--public-url", "http://public.kc.test:8080",
            "--resolver", dns.address,
        )  # fmt: skip
        try:
            yield live
        finally:
            live.stop()


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, follow_redirects=False, timeout=10) as client:
        yield client


def settled_outbox(server: LiveServer, timeout: float = 15) -> list[dict[str, object]]:
    """The outbox once the sender has dealt with every row (sent, skipped or failed): the point
    after which a mail that was going to be sent is in the sink, so its absence means something."""
    deadline = time.monotonic() + timeout
    while True:
        rows: list[dict[str, object]] = json.loads(server.cli("outbox", "--json").stdout)
        if all(row["state"] not in ("queued", "sending") for row in rows):
            return rows
        assert time.monotonic() < deadline, f"outbox not settled within {timeout}s: {rows}"
        time.sleep(0.1)


def local(url: str) -> str:
    """A link from a mail, as a path on the live server (mails carry the public URL)."""
    assert url.startswith("http://public.kc.test:8080/"), url
    return url.removeprefix("http://public.kc.test:8080")


def claim(server: LiveServer, email: str, *domain_names: str) -> tuple[str, str]:
    with LineClient("127.0.0.1", server.line_port) as client:
        key = client.request("apikey").data or ""
        for name in domain_names:
            assert client.request("add", apikey=key, domain=name).ok
        reply = client.request("claim", apikey=key, email=email)
    assert reply.ok, reply
    return key, reply.text


def account(server: LiveServer, email: str) -> dict:
    """As `keychest accounts --json` shows it (a subprocess: slow, so used where it matters)."""
    found = [a for a in json.loads(server.cli("accounts", "--json").stdout) if a["email"] == email]
    assert len(found) == 1, found
    return found[0]


def state(server: LiveServer, email: str) -> str:
    with sqlite3.connect(server.data_dir / "keychest.db") as db:
        return db.execute("SELECT state FROM accounts WHERE email = ?", (email,)).fetchone()[0]


def key_state(server: LiveServer, key: str) -> str:
    with sqlite3.connect(server.data_dir / "keychest.db") as db:
        return db.execute("SELECT state FROM api_keys WHERE prefix = ?", (key[:8],)).fetchone()[0]


def confirm(server: LiveServer, sink: SmtpSink, http: httpx.Client, email: str, *domains: str) -> str:
    key, _ = claim(server, email, *domains)
    mail = sink.wait_to(email, subject="Confirm your keychest account")
    response = http.post(local(sink.links(mail, "/confirm/")[0]))
    assert response.status_code == 303
    return key


def test_claim_mail_confirm_page_then_post_activates_and_signs_in(
    server: LiveServer, sink: SmtpSink, http: httpx.Client
) -> None:
    started = time.monotonic()
    key, status = claim(server, "alice@example.org", "www.alice.test", "api.alice.test:8443")
    assert status == "claimed; the owner of that address confirms by mail"
    mail = sink.wait_to("alice@example.org")
    assert time.monotonic() - started < 10
    text, html = sink.text(mail), sink.html(mail)
    assert str(mail["Subject"]) == "Confirm your keychest account"
    assert mail["Message-ID"] and mail["Date"] and mail["From"] == "keychest@keychest.test"
    assert "127.0.0.1" in text and f"{key[:8]}..." in text and key not in text and key not in html
    assert "www.alice.test" in text and "api.alice.test:8443" in text and "www.alice.test" in html
    confirm_url = local(sink.links(mail, "/confirm/")[0])
    # Following the link (a mail scanner, a preview) changes nothing.
    page = http.get(confirm_url)
    assert page.status_code == 200 and '<form method="post"' in page.text and "alice@example.org" in page.text
    assert http.get(confirm_url).status_code == 200
    assert state(server, "alice@example.org") == "dormant"
    done = http.post(confirm_url)
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert "keychest_session=" in done.headers["set-cookie"] and "HttpOnly" in done.headers["set-cookie"]
    assert account(server, "alice@example.org")["state"] == "active"  # as the admin command shows it
    # Single use: the link, and the "this wasn't me" link of the same mail, are spent.
    assert http.post(confirm_url).status_code == 404
    assert http.get(confirm_url).status_code == 404
    assert http.post(local(sink.links(mail, "/block/")[0])).status_code == 404
    assert state(server, "alice@example.org") == "active"


def test_this_was_not_me_blocks_the_account_and_its_keys(
    server: LiveServer, sink: SmtpSink, http: httpx.Client
) -> None:
    key, _ = claim(server, "victim@example.org", "www.victim.test")
    mail = sink.wait_to("victim@example.org")
    block_url = local(sink.links(mail, "/block/")[0])
    page = http.get(block_url)
    assert page.status_code == 200 and "Block" in page.text
    assert state(server, "victim@example.org") == "dormant"
    done = http.post(block_url)
    assert done.status_code == 200 and "Blocked" in done.text
    assert state(server, "victim@example.org") == "blocked"
    assert key_state(server, key) == "revoked"
    assert http.post(local(sink.links(mail, "/confirm/")[0])).status_code == 404
    assert state(server, "victim@example.org") == "blocked"


def test_a_new_key_for_a_confirmed_account_is_approved_or_revoked_by_mail(
    server: LiveServer, sink: SmtpSink, http: httpx.Client
) -> None:
    confirm(server, sink, http, "bob@example.org", "www.bob.test")
    second, status = claim(server, "bob@example.org", "shop.bob.test")
    assert status == "claimed; the owner of that address confirms by mail"
    assert key_state(server, second) == "pending"
    mail = sink.wait_to("bob@example.org", subject="Approve a new API key")
    text = sink.text(mail)
    assert f"{second[:8]}..." in text and "shop.bob.test" in text and "127.0.0.1" in text
    approve_url = local(sink.links(mail, "/keys/approve/")[0])
    assert http.get(approve_url).status_code == 200 and key_state(server, second) == "pending"
    assert http.post(approve_url).status_code == 200
    assert key_state(server, second) == "active"
    assert http.post(local(sink.links(mail, "/keys/revoke/")[0])).status_code == 404  # spent with approve

    third, _ = claim(server, "bob@example.org", "evil.bob.test")
    mail = sink.wait_to("bob@example.org", subject="Approve a new API key", count=2)
    assert f"{third[:8]}..." in sink.text(mail)
    revoke_url = local(sink.links(mail, "/keys/revoke/")[0])
    assert http.post(revoke_url).status_code == 200
    assert key_state(server, third) == "revoked"
    with LineClient("127.0.0.1", server.line_port) as client:
        assert client.request("add", apikey=third, domain="more.bob.test").code == 403


def test_sign_in_link_by_mail_without_account_enumeration(
    server: LiveServer, sink: SmtpSink, http: httpx.Client
) -> None:
    confirm(server, sink, http, "carol@example.org")
    claim(server, "dave@example.org")  # dormant: no sign-in mail before confirming
    form = http.get("/signin")
    assert form.status_code == 200 and 'name="email"' in form.text
    answers = [http.post("/signin", data={"email": e}) for e in ("carol@example.org", "nobody@example.org")]
    answers.append(http.post("/signin", data={"email": "dave@example.org"}))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].text == answers[1].text == answers[2].text
    mail = sink.wait_to("carol@example.org", subject="sign-in link")
    settled_outbox(server)
    assert sink.to("nobody@example.org") == [] and len(sink.to("dave@example.org")) == 1  # its confirmation
    signin_url = local(sink.links(mail, "/signin/")[0])
    page = http.get(signin_url)
    assert page.status_code == 200 and "set-cookie" not in page.headers
    done = http.post(signin_url)
    assert done.status_code == 303 and "keychest_session=" in done.headers["set-cookie"]
    assert http.post(signin_url).status_code == 404
    # Per-address limit (3 an hour), counted alike for addresses with and without an account.
    statuses = [http.post("/signin", data={"email": "nobody@example.org"}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert http.post("/signin", data={"email": "not an address"}).status_code == 422


def test_nothing_is_mailed_to_a_placeholder(server: LiveServer, sink: SmtpSink, http: httpx.Client) -> None:
    key, status = claim(server, "host-1234@keychest.test", "www.placeholder.test")
    assert status.startswith("claimed with a placeholder address")
    assert http.post("/signin", data={"email": "host-1234@keychest.test"}).status_code == 200
    outbox = settled_outbox(server)
    assert sink.matching(lambda m: "keychest.test" in str(m["To"])) == []
    assert not [m for m in outbox if m["to"].endswith("@keychest.test") and m["state"] == "sent"]
