"""The dashboard's "Scan now", reached through `keychest signin-link` (no mail involved): a
certificate swapped on a live TLS server shows within seconds of pressing the button."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from keychest.client import LineClient
from tests.scan.tls_servers import TestServers
from tests.support.swap_tls import SwappableTLS, sha256_of
from tests.web.conftest import WebEnv

pytestmark = pytest.mark.timeout(120)

OWNER = "rescan-owner@example.org"
STRANGER = "rescan-stranger@example.org"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


def sign_in(env: WebEnv, web: httpx.Client, email: str) -> str:
    """Sign in with a printed link, as an admin without SMTP does; the link's kind."""
    printed = env.server.cli("signin-link", email, "--public-url", env.url)
    assert printed.returncode == 0, printed.stderr
    url = printed.stdout.strip()
    assert url.startswith(env.url) and "\n" not in url
    page = web.get(url)
    assert page.status_code == 200 and '<form method="post"' in page.text, page.text
    done = web.post(url)
    assert done.status_code == 303, done.text
    assert web.post(url).status_code == 404  # once
    return url.removeprefix(env.url).split("/")[1]


def approve_keys(web: httpx.Client) -> None:
    keys = web.get("/keys")
    for key_id in re.findall(r'action="/keys/(\d+)/approve"', keys.text):
        assert web.post(f"/keys/{key_id}/approve", data={"csrf": csrf_of(keys)}).status_code == 303


def line_sha(env: WebEnv, key: str, domain: str) -> str | None:
    with LineClient("127.0.0.1", env.server.line_port) as line:
        reply = line.request("expiration", apikey=key, domain=domain)
    assert reply.ok, reply
    return dict(item.split("=", 1) for item in (reply.data or "").split()).get("sha256")


def wait_sha(env: WebEnv, key: str, domain: str, sha256: str, timeout: float) -> float:
    started = time.monotonic()
    while line_sha(env, key, domain) != sha256:
        assert time.monotonic() - started < timeout, f"{domain} did not show {sha256[:12]} in {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_scan_now_sees_a_swapped_certificate_within_seconds(web_env: WebEnv) -> None:
    first = web_env.certs.valid("127.0.0.1")
    with TestServers() as servers:
        site = SwappableTLS(servers, first)
        domain = f"127.0.0.1:{site.port}"
        key = web_env.new_key(OWNER)
        with LineClient("127.0.0.1", web_env.server.line_port) as line:
            assert line.request("add", apikey=key, domain=domain).ok
        with web_env.client() as web:
            # The account's confirmation mail is not needed: the printed link confirms it.
            assert sign_in(web_env, web, OWNER) == "confirm"
            assert sign_in(web_env, web, OWNER) == "signin"  # confirmed now: a plain sign-in link
            approve_keys(web)
            wait_sha(web_env, key, domain, sha256_of(first), 20)
            listing = web.get("/servers")
            found = re.search(rf'href="/servers/(\d+)">{re.escape(domain)}<', listing.text)
            assert found, listing.text
            path = f"/servers/{found.group(1)}"
            page = web.get(path)
            assert page.status_code == 200 and "Scan now" in page.text
            assert f'action="{path}/rescan"' in page.text

            renewed = web_env.certs.valid("127.0.0.1")
            site.swap(renewed)
            assert web.post(f"{path}/rescan", data={"csrf": "forged"}).status_code == 403
            asked = web.post(f"{path}/rescan", data={"csrf": csrf_of(page)})
            assert asked.status_code == 303 and asked.headers["location"] == f"{path}?done=rescan"
            took = wait_sha(web_env, key, domain, sha256_of(renewed), 15)
            assert took < 5, took
            assert "Scan requested" in web.get(asked.headers["location"]).text

        # Another account cannot have someone else's server scanned (nor learn it exists).
        web_env.new_key(STRANGER)
        with web_env.client() as stranger:
            sign_in(web_env, stranger, STRANGER)
            theirs = stranger.get("/servers")
            refused = stranger.post(f"{path}/rescan", data={"csrf": csrf_of(theirs)})
            assert refused.status_code == 404
        site.close()
