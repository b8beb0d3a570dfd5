"""Issue 10 items 1, 2 and 3: whose key a confirmation approves, blocked addresses, re-pointing.

Against the live server of this package (line API, mail through aiosmtpd, REST, dashboard);
each test speaks from 127.0.0.2xx addresses of its own.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.notify.smtp import SmtpSink
from tests.security.conftest import Env
from tests.security.support import http, line, link, rows

pytestmark = pytest.mark.timeout(120)


def key_state(env: Env, source: str, key: str) -> str:
    with http(env.server, source) as client:
        answer = client.get("/api/v1.0/user", params={"api_key": key})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["key_state"])


def new_key(env: Env, source: str) -> str:
    reply = line(env.server, source, "apikey")
    assert reply.ok and reply.data, reply
    return reply.data


def mail_about(sink: SmtpSink, address: str, key: str, *, count: int) -> object:
    """The mail to ``address`` naming ``key`` by its prefix, once ``count`` mails came."""
    sink.wait_to(address, count=count)
    found = [m for m in sink.to(address) if f"{key[:8]}..." in SmtpSink.text(m)]
    assert len(found) == 1, [SmtpSink.text(m)[:300] for m in sink.to(address)]
    return found[0]


def test_confirming_approves_only_the_key_the_mail_is_about(env: Env) -> None:
    server, sink = env.server, env.sink
    stranger, owner = "127.0.0.201", "127.0.0.202"
    victim = "victim@claims.example.org"
    # The attack: a stranger's key claimed for the victim's address first.
    k1 = new_key(env, stranger)
    assert line(server, stranger, "claim", apikey=k1, email=victim).ok
    assert line(server, stranger, "add", apikey=k1, domain="stranger.claims.test").ok
    # The victim signs up later with a key of their own: it gets its own mail.
    k2 = new_key(env, owner)
    assert line(server, owner, "claim", apikey=k2, email=victim).ok
    assert line(server, owner, "add", apikey=k2, domain="owner.claims.test").ok
    strangers_mail = mail_about(sink, victim, k1, count=2)
    owners_mail = mail_about(sink, victim, k2, count=2)
    # Each mail says which key (prefix, from where), with "this wasn't me" next to it.
    assert stranger in SmtpSink.text(strangers_mail) and owner not in SmtpSink.text(strangers_mail)
    assert owner in SmtpSink.text(owners_mail)
    for mail in (strangers_mail, owners_mail):
        assert "This wasn't me" in SmtpSink.text(mail)
        link(sink, mail, "/block/")
    # The GET page behind the link names the key too, and the domains it registered.
    confirm = link(sink, owners_mail, "/confirm/")
    with http(server, owner) as browser:
        page = browser.get(confirm)
        assert f"{k2[:8]}..." in page.text and "owner.claims.test" in page.text
        assert "stranger.claims.test" not in page.text
        assert browser.post(confirm).status_code == 303
    assert key_state(env, owner, k2) == "active"
    assert key_state(env, stranger, k1) != "active"
    # The stranger's key sees none of the owner's servers and cannot remove them.
    with http(server, stranger) as client:
        listed = client.get("/api/v1.0/servers", params={"api_key": k1}).text
        assert "owner.claims.test" not in listed
        client.post("/api/v1.0/servers/remove", json={"api_key": k1, "domain": "owner.claims.test"})
    with http(server, owner) as client:
        assert "owner.claims.test" in client.get("/api/v1.0/servers", params={"api_key": k2}).text
    # The stranger's mail, confirmed after the owner's, approves nothing more.
    with http(server, stranger) as browser:
        assert browser.post(link(sink, strangers_mail, "/confirm/")).status_code == 404
    assert key_state(env, stranger, k1) != "active"


def test_a_blocked_address_is_offered_a_reopen_once_a_day(env: Env) -> None:
    server, sink = env.server, env.sink
    stranger, owner = "127.0.0.203", "127.0.0.204"
    address = "blocker@claims.example.org"
    k1 = new_key(env, stranger)
    assert line(server, stranger, "claim", apikey=k1, email=address).ok
    with http(server, owner) as browser:
        block = link(sink, sink.wait_to(address, subject="Confirm"), "/block/")
        assert browser.post(block).status_code == 200
    # Later the owner wants keychest after all: the claim is not swallowed, a reopen is offered.
    k2 = new_key(env, owner)
    claimed = line(server, owner, "claim", apikey=k2, email=address)
    assert claimed.ok and claimed.text == "claimed; the owner of that address confirms by mail"
    reopen_mail = sink.wait_to(address, subject="reopen")
    assert f"{k2[:8]}..." in SmtpSink.text(reopen_mail)
    # A second claim the same day: no second offer. Proven by a later mail arriving first.
    k3 = new_key(env, stranger)
    assert line(server, stranger, "claim", apikey=k3, email=address).ok
    marker = new_key(env, owner)
    assert line(server, owner, "claim", apikey=marker, email="marker@claims.example.org").ok
    sink.wait_to("marker@claims.example.org")
    assert len([m for m in sink.to(address) if "reopen" in str(m["Subject"])]) == 1
    # Reopening signs the owner in; each waiting key is then approved by name.
    with http(server, owner) as browser:
        reopen = link(sink, reopen_mail, "/reopen/")
        assert "Reopen" in browser.get(reopen).text
        assert browser.post(reopen).status_code == 303
        keys_page = browser.get("/keys")
        assert keys_page.status_code == 200 and k2[:8] in keys_page.text and k3[:8] in keys_page.text
    assert rows(server, "SELECT state FROM accounts WHERE email = ?", address) == [("active",)]
    assert key_state(env, owner, k2) == "pending" and key_state(env, stranger, k3) == "pending"


def test_an_unconfirmed_claim_can_be_pointed_at_another_address(env: Env) -> None:
    server, sink = env.server, env.sink
    source = "127.0.0.205"
    key = new_key(env, source)
    # A request cut short ("...example.co") and then the right one.
    assert line(server, source, "claim", apikey=key, email="me@repoint.example.co").ok
    first = sink.wait_to("me@repoint.example.co")
    moved = line(server, source, "claim", apikey=key, email="me@repoint.example.com")
    assert (moved.ok, moved.code) == (True, 200), moved
    second = sink.wait_to("me@repoint.example.com")
    assert f"{key[:8]}..." in SmtpSink.text(second)
    # The first address gets nothing more: its link is dead, and no other mail follows.
    with http(server, source) as browser:
        assert browser.post(link(sink, first, "/confirm/")).status_code == 404
    assert len(sink.to("me@repoint.example.co")) == 1
    # Once confirmed, the claim is the address owner's: it cannot be moved again.
    with http(server, source) as browser:
        assert browser.post(link(sink, second, "/confirm/")).status_code == 303
    refused = line(server, source, "claim", apikey=key, email="thief@repoint.example.org")
    assert refused.code == 403


def test_a_claim_split_across_writes_by_bash_can_be_fixed(env: Env) -> None:
    # The reproduction: bash writes the request in two parts 0.3 s apart. Whatever the
    # server made of the first part, the key holder can point the claim where it belongs.
    server, sink = env.server, env.sink
    key = new_key(env, "127.0.0.206")
    script = (
        f'exec 3<>"/dev/tcp/127.0.0.1/{server.line_port}"; '
        f"printf 'command claim apikey {key} email me@split.example.co' >&3; sleep 0.3; "
        "printf 'm\\n' >&3; dd bs=1000 count=1 <&3 2>/dev/null"
    )
    split = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert "status " in split.stdout, split  # answered, whichever address it took
    fixed = line(server, "127.0.0.206", "claim", apikey=key, email="me@split.example.com")
    assert (fixed.ok, fixed.code) == (True, 200), fixed
    assert f"{key[:8]}..." in SmtpSink.text(sink.wait_to("me@split.example.com"))
    ((owner,),) = rows(
        server,
        "SELECT accounts.email FROM api_keys JOIN accounts ON accounts.id = api_keys.account_id "
        "WHERE api_keys.prefix = ?",
        key[:8],
    )
    assert owner == "me@split.example.com"
