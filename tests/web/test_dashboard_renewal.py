"""The dashboard's server page shows the last renewal a machine reported (`command renewal`)."""

from __future__ import annotations

import re

import httpx
import pytest

from keychest.client import LineClient
from tests.web.conftest import WebEnv
from tests.web.test_dashboard_rescan import approve_keys, sign_in

pytestmark = pytest.mark.timeout(120)

OWNER = "renewal-owner@example.org"


def server_page(web: httpx.Client, domain: str) -> str:
    listing = web.get("/servers")
    found = re.search(rf'href="/servers/(\d+)">{re.escape(domain)}<', listing.text)
    assert found, listing.text
    page = web.get(f"/servers/{found.group(1)}")
    assert page.status_code == 200
    return page.text


def test_server_page_shows_the_last_renewal(web_env: WebEnv) -> None:
    key = web_env.new_key(OWNER)
    domain = "renewal-page.example.net"
    with LineClient("127.0.0.1", web_env.server.line_port) as line:
        assert line.request("add", apikey=key, domain=domain).ok
    with web_env.client() as web:
        sign_in(web_env, web, OWNER)
        sign_in(web_env, web, OWNER)
        approve_keys(web)
        assert "Last renewal" not in server_page(web, domain)
        with LineClient("127.0.0.1", web_env.server.line_port) as line:
            reply = line.request(
                "renewal", apikey=key, domain=domain, status="failed", host="web7.example.org"
            )
        assert reply.ok, reply
        page = server_page(web, domain)
        assert "Last renewal" in page and "web7.example.org" in page
        assert '<span class="badge critical">failed</span>' in page
