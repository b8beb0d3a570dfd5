"""Item 4 of the security review: cross-site requests cannot change anything.

Every state-changing dashboard form refuses a POST without the session's CSRF token and with
the token of another session; the mail-link POSTs need the token in the URL and refuse a
browser's cross-site POST (login CSRF); the session cookie is HttpOnly and SameSite; no page
can be framed.
"""

from __future__ import annotations

import httpx
import pytest

from tests.security.conftest import Env
from tests.security.support import confirmed_account, csrf_of, http, line, link, rows

pytestmark = pytest.mark.timeout(120)


def state(env: Env, email: str) -> tuple:
    """Everything the forms below could change for the account of ``email``."""
    account = rows(env.server, "SELECT id, state FROM accounts WHERE email = ?", email)[0]
    return (
        account,
        rows(env.server, "SELECT id, state FROM api_keys WHERE account_id = ? ORDER BY id", account[0]),
        rows(
            env.server,
            "SELECT w.endpoint_id FROM watches w JOIN api_keys k ON k.id = w.api_key_id "
            "WHERE k.account_id = ? ORDER BY 1",
            account[0],
        ),
        rows(env.server, "SELECT * FROM account_preferences WHERE account_id = ?", account[0]),
        rows(env.server, "SELECT * FROM channels WHERE account_id = ? ORDER BY id", account[0]),
        rows(env.server, "SELECT * FROM notify_holds ORDER BY id"),
    )


def test_every_dashboard_form_needs_this_sessions_token(env: Env) -> None:
    server = env.server
    alice = confirmed_account(server, env.sink, "127.0.0.81", "alice@csrf.example.org")
    mallory = confirmed_account(server, env.sink, "127.0.0.82", "mallory@csrf.example.org")
    token = csrf_of(alice.session.get("/servers"))
    other = csrf_of(mallory.session.get("/servers"))
    assert token != other

    # Something for each form to act on: a watched server, a pending key, an active key.
    answer = alice.session.post("/servers/add", data={"csrf": token, "domain": "www.alice-csrf.test"})
    assert answer.status_code == 303
    second = line(server, "127.0.0.81", "apikey").data
    assert line(server, "127.0.0.81", "claim", apikey=str(second), email=alice.email).ok
    ((endpoint,),) = rows(server, "SELECT id FROM endpoints WHERE host = 'www.alice-csrf.test'")
    ((pending,),) = rows(server, "SELECT id FROM api_keys WHERE prefix = ?", str(second)[:8])
    ((active,),) = rows(server, "SELECT id FROM api_keys WHERE prefix = ?", alice.key[:8])

    forms = [
        ("/servers/add", {"domain": "www.evil-csrf.test"}),
        (f"/servers/{endpoint}/rescan", {}),
        (f"/servers/{endpoint}/remove", {"confirmed": "yes"}),
        (f"/keys/{pending}/approve", {}),
        (f"/keys/{active}/revoke", {"confirmed": "yes"}),
        (
            "/settings",
            {"notify_email": "evil@csrf.example.org", "weekly_day": "0", "weekly_time": "08:00"},
        ),
        ("/settings", {"action": "unsubscribe", "confirmed": "yes"}),
        ("/signout", {}),
    ]
    # Issue 12: alert channels (settings) and snooze / maintenance (server page). Ids that do
    # not exist still need the token first; the ones that act are checked below.
    alerts = [
        (f"/servers/{endpoint}/snooze", {"days": "3"}),
        (f"/servers/{endpoint}/maintenance", {"start": "2030-01-01 22:00", "end": "2030-01-02 02:00"}),
        ("/settings/channels", {"url": "https://hooks.invalid/x"}),
        ("/settings/channels/999999/test", {}),
        ("/settings/channels/999999/remove", {"confirmed": "yes"}),
        (f"/servers/{endpoint}/holds/999999/remove", {"confirmed": "yes"}),
    ]
    before = state(env, alice.email)
    for path, data in forms + alerts:
        for label, extra in (
            ("no token", {}),
            ("empty token", {"csrf": ""}),
            ("another session's token", {"csrf": other}),
            ("a forged token", {"csrf": "0" * 32}),
        ):
            answer = alice.session.post(path, data={**data, **extra})
            assert answer.status_code == 403, f"{path} with {label}: {answer.status_code}"
        # The token in the query string instead of the body does not count either.
        assert alice.session.post(path, params={"csrf": token}, data=data).status_code == 403
        # Without a session at all, the token alone does nothing: off to the sign-in page.
        with http(server, "127.0.0.83") as stranger:
            answer = stranger.post(path, data={**data, "csrf": token})
            assert answer.status_code in (303, 403), path
            assert answer.status_code == 403 or answer.headers["location"].startswith("/signin")
    assert state(env, alice.email) == before
    assert not rows(server, "SELECT id FROM endpoints WHERE host = 'www.evil-csrf.test'")

    # Destructive forms with the right token but not yet confirmed only ask (issue 17 item 3):
    # a page whose own form posts the same action again with confirmed=yes, nothing changed.
    for path, data in (forms[2], forms[4], forms[6]):
        asked = {k: v for k, v in data.items() if k != "confirmed"}
        answer = alice.session.post(path, data={**asked, "csrf": token})
        assert answer.status_code == 200, f"{path}: {answer.status_code}"
        assert f'action="{path}"' in answer.text and 'name="confirmed" value="yes"' in answer.text
        assert state(env, alice.email) == before, path

    # The same forms with the right token work (so the refusals above were about the token).
    for path, data in forms[1:5] + forms[6:-1] + alerts[:4] + forms[-1:]:
        answer = alice.session.post(path, data={**data, "csrf": token})
        assert answer.status_code == 303, f"{path}: {answer.status_code} {answer.text[:200]}"
        if path.endswith("/revoke"):
            # Revoking an active key ends every session (issue 10 item 8); this browser got a
            # fresh cookie, and with it a fresh form token.
            token = csrf_of(alice.session.get("/keys"))
    assert state(env, alice.email) != before


def test_mail_links_need_their_token_and_refuse_cross_site_posts(env: Env) -> None:
    server, sink = env.server, env.sink
    confirmed_account(server, sink, "127.0.0.84", "bob@csrf.example.org")
    with http(server, "127.0.0.84") as client:
        for prefix in ("confirm", "block", "keys/approve", "keys/revoke", "signin", "unsubscribe"):
            # (/signin/ is redirected to the "mail me a link" form, which needs an address)
            assert client.post(f"/{prefix}/").status_code in (307, 404, 405), prefix
            assert client.post(f"/{prefix}/{'A' * 43}").status_code == 404, prefix

        assert client.post("/signin", data={"email": "bob@csrf.example.org"}).status_code == 200
        path = link(sink, sink.wait_to("bob@csrf.example.org", subject="sign-in"), "/signin/")
        # A page elsewhere that posts the link (the attacker's own, to sign the victim in as the
        # attacker): the browser says so, and nothing happens; the link still works after.
        for headers in (
            {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
            {"Origin": "https://evil.example"},
        ):
            answer = client.post(path, headers=headers)
            assert answer.status_code == 403 and "keychest_session" not in answer.headers.get(
                "set-cookie", ""
            )
        # Our own page's POST: same-origin (browsers send Origin: null under no-referrer).
        answer = client.post(path, headers={"Sec-Fetch-Site": "same-origin", "Origin": "null"})
        assert answer.status_code == 303
        assert client.post(path).status_code == 404  # used: once only


def test_session_cookie_flags_and_framing(env: Env) -> None:
    server, sink = env.server, env.sink
    key = line(server, "127.0.0.85", "apikey").data
    assert line(server, "127.0.0.85", "claim", apikey=str(key), email="carol@csrf.example.org").ok
    path = link(sink, sink.wait_to("carol@csrf.example.org", subject="Confirm"), "/confirm/")
    with http(server, "127.0.0.85") as client:
        page = client.get(path)
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"  # the token stays out of Referer
        answer = client.post(path)
        cookie = answer.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
        assert "httponly" in attributes
        assert attributes["samesite"].lower() == "samesite=lax"
        assert attributes["path"] == "Path=/"
        dashboard = client.get("/")
        assert dashboard.status_code == 200
        assert dashboard.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in dashboard.headers["content-security-policy"]


def test_signin_redirect_ignores_next(env: Env) -> None:
    """`/signin?next=https://evil.example` must not send anyone elsewhere (no open redirect)."""
    with httpx.Client(base_url=env.server.http_url, follow_redirects=False) as client:
        answer = client.get("/signin", params={"next": "https://evil.example/"})
        assert answer.status_code == 200 and "evil.example" not in answer.text
        answer = client.get("/servers?x=1")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/signin?next=%2F")
