"""Item 7 of the security review: every key event is in the audit log with its source.

Each front door speaks from its own loopback address (line API .91, REST .92, dashboard .93,
mail links .94), so the test can check that each event carries the address that really made
it: key created, claim, confirm, block, approve, revoke, sign-in, domain added.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import Env
from tests.security.support import csrf_of, http, line, link, rows

pytestmark = pytest.mark.timeout(120)

LINE, REST, DASHBOARD, MAIL = "127.0.0.91", "127.0.0.92", "127.0.0.93", "127.0.0.94"


def key_id(env: Env, key: str) -> int:
    ((found,),) = rows(env.server, "SELECT id FROM api_keys WHERE prefix = ?", key[:8])
    return found


def events(env: Env, since: int) -> list[tuple[str, str | None, int | None, int | None, str | None]]:
    return rows(
        env.server,
        "SELECT event, ip, api_key_id, account_id, subject FROM audit_log WHERE id > ? ORDER BY id",
        since,
    )


def test_every_key_event_is_logged_with_its_source_address(env: Env) -> None:
    server, sink = env.server, env.sink
    ((start,),) = rows(server, "SELECT COALESCE(MAX(id), 0) FROM audit_log")
    email = "dana@audit.example.org"

    # Line API: a key, its claim, a domain.
    first = str(line(server, LINE, "apikey").data)
    assert line(server, LINE, "claim", apikey=first, email=email).ok
    assert line(server, LINE, "add", apikey=first, domain="line.audit.test").ok
    # Mail link: confirm (and with it a signed-in browser, carried over to the dashboard address).
    confirm_mail = sink.wait_to(email, subject="Confirm")
    with http(server, MAIL) as mail_client:
        assert mail_client.post(link(sink, confirm_mail, "/confirm/")).status_code == 303
        cookie = mail_client.cookies["keychest_session"]
    ((account,),) = rows(server, "SELECT id FROM accounts WHERE email = ?", email)

    # REST: a key claimed for the same account (pending), a domain, a self-revoke.
    with http(server, REST) as rest:
        rest_key = rest.get(f"/api/v1.0/access/claim/{email}").json()["api_key"]
        assert rest.post("/api/v1.0/servers/add", json={"api_key": rest_key, "domain": "rest.audit.test"})
        assert rest.post("/api/v1.0/access/revoke", json={"api_key": rest_key}).status_code == 200
    # Mail links: approve one new key, revoke another.
    approved = str(line(server, LINE, "apikey").data)
    assert line(server, LINE, "claim", apikey=approved, email=email).ok
    revoked = str(line(server, LINE, "apikey").data)
    assert line(server, LINE, "claim", apikey=revoked, email=email).ok
    approve_mail = sink.wait_to(email, subject=f"Approve a new API key ({approved[:8]}")
    revoke_mail = sink.wait_to(email, subject=f"Approve a new API key ({revoked[:8]}")
    with http(server, MAIL) as mail_client:
        assert mail_client.post(link(sink, approve_mail, "/keys/approve/")).status_code == 200
        assert mail_client.post(link(sink, revoke_mail, "/keys/revoke/")).status_code == 200
    # Dashboard: a domain, and approve + revoke of two more pending keys.
    later = [str(line(server, LINE, "apikey").data) for _ in range(2)]
    for key in later:
        assert line(server, LINE, "claim", apikey=key, email=email).ok
    with http(server, DASHBOARD) as browser:
        browser.cookies.set("keychest_session", cookie)
        token = csrf_of(browser.get("/keys"))
        assert (
            browser.post("/servers/add", data={"csrf": token, "domain": "dash.audit.test"}).status_code == 303
        )
        assert browser.post(f"/keys/{key_id(env, later[0])}/approve", data={"csrf": token}).status_code == 303
        assert (
            browser.post(
                f"/keys/{key_id(env, later[1])}/revoke", data={"csrf": token, "confirmed": "yes"}
            ).status_code
            == 303
        )
        # A sign-in requested here, used from the mail.
        assert browser.post("/signin", data={"email": email}).status_code == 200
    signin = link(sink, sink.wait_to(email, subject="sign-in"), "/signin/")
    with http(server, MAIL) as mail_client:
        assert mail_client.post(signin).status_code == 303
    # Block: another address, its "this wasn't me" link.
    victim = str(line(server, LINE, "apikey").data)
    assert line(server, LINE, "claim", apikey=victim, email="erin@audit.example.org").ok
    block = link(sink, sink.wait_to("erin@audit.example.org", subject="Confirm"), "/block/")
    with http(server, MAIL) as mail_client:
        assert mail_client.post(block).status_code == 200

    log = events(env, start)
    assert all(ip for _, ip, _, _, _ in log), log  # every event has a source address

    def logged(event: str, ip: str, key: str | None = None, subject: str | None = None) -> None:
        wanted = [
            row
            for row in log
            if row[0] == event
            and row[1] == ip
            and (key is None or row[2] == key_id(env, key))
            and (subject is None or row[4] == subject)
        ]
        assert wanted, f"no {event} from {ip} (key {key and key[:8]}, {subject}) in\n" + "\n".join(
            map(str, log)
        )

    logged("key_created", LINE, first)
    logged("claim", LINE, first, email)
    logged("domain_added", LINE, first, "line.audit.test")
    logged("confirm", MAIL, subject=email)
    logged("key_created", REST, rest_key)
    logged("claim", REST, rest_key, email)
    logged("domain_added", REST, rest_key, "rest.audit.test")
    logged("key_revoked", REST, rest_key)
    logged("key_approved", MAIL, approved)
    logged("key_revoked", MAIL, revoked)
    logged("domain_added", DASHBOARD, subject="dash.audit.test")
    logged("key_approved", DASHBOARD, later[0])
    logged("key_revoked", DASHBOARD, later[1])
    logged("signin_request", DASHBOARD)
    logged("signin", MAIL, subject=email)
    logged("block", MAIL, subject="erin@audit.example.org")
    # Events about the account carry its id (a later investigation starts from the account).
    for event, _, _, account_id, subject in log:
        if subject == email and event in ("claim", "confirm", "signin"):
            assert account_id == account, (event, account_id)
