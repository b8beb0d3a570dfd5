"""Issue 10 item 8: sessions end on the server, not only in the browser that signed out.

A copy of the session cookie (another browser, or one stolen) stops working once the account
signs out, or once a key with the account's access is revoked; it then redirects to /signin.
"""

from __future__ import annotations

import httpx
import pytest

from tests.security.conftest import Env
from tests.security.support import confirmed_account, csrf_of, http

pytestmark = pytest.mark.timeout(120)

COOKIE = "keychest_session"


def copy_of(env: Env, source: str, cookie: str) -> httpx.Client:
    client = http(env.server, source)
    client.cookies.set(COOKIE, cookie)
    return client


def assert_signed_out(client: httpx.Client) -> None:
    answer = client.get("/servers")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/signin"), answer


def test_sign_out_ends_every_copy_of_the_session(env: Env) -> None:
    account = confirmed_account(env.server, env.sink, "127.0.0.211", "signout@sessions.example.org")
    cookie = account.session.cookies[COOKIE]
    with copy_of(env, "127.0.0.212", cookie) as other_browser:
        assert other_browser.get("/servers").status_code == 200
        browser = account.session
        token = csrf_of(browser.get("/keys"))
        assert browser.post("/signout", data={"csrf": token}).status_code == 303
        browser.close()
        assert_signed_out(other_browser)
    # The cookie as it was before signing out is refused too (not only a deleted one).
    with copy_of(env, "127.0.0.211", cookie) as replayed:
        assert_signed_out(replayed)


def test_revoking_an_active_key_ends_the_sessions(env: Env) -> None:
    account = confirmed_account(env.server, env.sink, "127.0.0.213", "revoke@sessions.example.org")
    cookie = account.session.cookies[COOKIE]
    with copy_of(env, "127.0.0.214", cookie) as stolen:
        assert stolen.get("/servers").status_code == 200
        with http(env.server, "127.0.0.213") as rest:
            answer = rest.post("/api/v1.0/access/revoke", json={"api_key": account.key})
            assert answer.status_code == 200, answer.text
        assert_signed_out(stolen)
    account.session.close()


def test_the_browser_that_revokes_a_key_stays_signed_in(env: Env) -> None:
    account = confirmed_account(env.server, env.sink, "127.0.0.215", "dash@sessions.example.org")
    cookie = account.session.cookies[COOKIE]
    browser = account.session
    with copy_of(env, "127.0.0.216", cookie) as other:
        page = browser.get("/keys")
        token = csrf_of(page)
        key_ids = [part.split("/")[2] for part in page.text.split('action="')[1:] if "/revoke" in part[:40]]
        assert key_ids, page.text[:500]
        done = browser.post(f"/keys/{key_ids[0]}/revoke", data={"csrf": token, "confirmed": "yes"})
        assert done.status_code == 303
        assert browser.get("/keys").status_code == 200
        assert_signed_out(other)
    browser.close()
