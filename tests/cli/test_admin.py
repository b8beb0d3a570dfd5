"""Admin commands as an operator runs them: real subprocesses, output through a pipe."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keychest.client import LineClient
from keychest.config import Settings
from keychest.service import accounts, domains, keys, links
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from tests.support.server import KEYCHEST, LiveServer

pytestmark = pytest.mark.timeout(120)

LONG_EMAIL = "a-rather-long-mailbox-name-for-the-operations-team@monitoring.example-organisation.org"
LONG_DOMAIN = "a-long-service-name-behind-the-load-balancer.eu-central.internal.example-organisation.net:8443"
NOW = dt.datetime(2026, 12, 1, 12, 0, 0)


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[str, Keychest]]:
    url = f"sqlite:///{tmp_path / 'keychest.db'}"
    db = Database(url)
    upgrade(db)
    clock = {"now": NOW}
    service = Keychest(db, Settings(url, tmp_path, "keychest.test"), lambda: clock["now"])
    service.clock_state = clock  # type: ignore[attr-defined]
    key = service.call(keys.create).key
    service.call(accounts.claim, key, LONG_EMAIL)  # queues the confirmation mail too
    service.call(domains.add, key, LONG_DOMAIN)
    yield url, service
    db.dispose()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # stdout is a pipe, as in `keychest accounts | grep ...`; COLUMNS as a narrow terminal sets it.
    return subprocess.run(
        [*KEYCHEST, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "60", **(env or {})},
    )


def test_piped_listings_print_whole_values(filled: tuple[str, Keychest]) -> None:
    url, _ = filled
    expected = {
        "domains": [LONG_DOMAIN, LONG_EMAIL],
        "keys": [LONG_EMAIL],
        "accounts": [LONG_EMAIL],
        "outbox": [LONG_EMAIL, "confirm_account"],
    }
    for command, values in expected.items():
        done = run(command, "--db", url)
        assert done.returncode == 0, done.stderr
        for value in values:
            assert value in done.stdout, (command, value, done.stdout)
        assert "…" not in done.stdout, done.stdout
        as_json = run(command, "--db", url, "--json")
        assert as_json.returncode == 0, as_json.stderr
        dumped = json.dumps(json.loads(as_json.stdout))
        for value in values:
            assert value in dumped, (command, value)


def test_signin_link_is_printed_for_an_account_and_lives_15_minutes(filled: tuple[str, Keychest]) -> None:
    url, service = filled
    printed = run("signin-link", "--db", url, "--public-url", "https://monitor.example.net/", LONG_EMAIL)
    assert printed.returncode == 0, printed.stderr
    link = printed.stdout.strip()
    # Never confirmed (no mail server): the link confirms the account as it signs in.
    assert link.startswith("https://monitor.example.net/confirm/")
    assert "not confirmed yet" in printed.stderr
    service.call(accounts.confirm, service.read(accounts.list_summaries)[0].id)

    # Without --public-url, the address the server listens on (KEYCHEST_HTTP_LISTEN, as serve reads it).
    plain = run("signin-link", "--db", url, LONG_EMAIL, env={"KEYCHEST_HTTP_LISTEN": "0.0.0.0:9099"})
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("http://127.0.0.1:9099/signin/") and plain.stderr == ""

    made = service.call(links.admin_signin_link, LONG_EMAIL)
    token = made.url.rsplit("/", 1)[1]
    clock = service.clock_state  # type: ignore[attr-defined]
    clock["now"] = NOW + dt.timedelta(minutes=14, seconds=59)
    assert service.read(links.view, "signin", token).email == LONG_EMAIL
    clock["now"] = NOW + dt.timedelta(minutes=15)
    with pytest.raises(ServiceError) as expired:
        service.read(links.view, "signin", token)
    assert expired.value.code == 404

    unknown = run("signin-link", "--db", url, "nobody@example.org")
    assert unknown.returncode == 1 and "no account for nobody@example.org" in unknown.stderr
    assert unknown.stdout == ""


def test_key_states_named_alike_in_cli_rest_and_dashboard(live_server: LiveServer) -> None:
    email = "states@example.org"

    def cli_state(prefix: str) -> str:
        done = live_server.cli("keys", "--json")
        assert done.returncode == 0, done.stderr
        return next(row["state"] for row in json.loads(done.stdout) if row["prefix"] == prefix)

    with httpx.Client(base_url=live_server.http_url, timeout=10) as web:
        key = web.get(f"/api/v1.0/access/claim/{email}").json()["api_key"]
        rest = web.get("/api/v1.0/user", params={"api_key": key}).json()
        prefix = rest["key_prefix"]
        assert rest["key_state"] == cli_state(prefix) == "pending"

        link = live_server.cli("signin-link", email, "--public-url", live_server.http_url).stdout.strip()
        assert web.post(link).status_code == 303  # confirmed and signed in
        page = web.get("/keys")
        assert f'data-key="{prefix}"' in page.text and 'key-pending">pending<' in page.text
        key_id = page.text.split('action="/keys/', 1)[1].split("/", 1)[0]
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert web.post(f"/keys/{key_id}/approve", data={"csrf": csrf}).status_code == 303

        rest = web.get("/api/v1.0/user", params={"api_key": key}).json()
        assert rest["key_state"] == cli_state(prefix) == "active"
        assert 'key-active">active<' in web.get("/keys").text


def test_signed_in_without_mail_the_dashboard_points_at_waiting_keys(live_server: LiveServer) -> None:
    # The first run without SMTP: the hook claims a key and adds a domain, the operator prints
    # a sign-in link. Confirming approves no key by itself (issue 10 item 1), so the dashboard
    # must say where the servers are instead of showing an empty list.
    email = "newcomer@example.org"
    with LineClient("127.0.0.1", live_server.line_port) as line:
        key = line.request("apikey").data or ""
        assert line.request("add", apikey=key, domain="www.newcomer.test").ok
        assert line.request("claim", apikey=key, email=email).ok
    with httpx.Client(base_url=live_server.http_url, timeout=10) as web:
        link = live_server.cli("signin-link", email, "--public-url", live_server.http_url).stdout.strip()
        assert web.post(link).status_code == 303
        for path in ("/", "/servers"):
            page = web.get(path).text
            assert 'data-pending-keys="1"' in page and '<a href="/keys">API keys</a>' in page, path
        assert "www.newcomer.test" not in web.get("/servers").text
        keys_page = web.get("/keys").text
        assert "data-pending-keys" not in keys_page  # the page that lists them needs no pointer
        key_id = keys_page.split('action="/keys/', 1)[1].split("/", 1)[0]
        csrf = keys_page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert web.post(f"/keys/{key_id}/approve", data={"csrf": csrf}).status_code == 303
        servers = web.get("/servers").text
        assert "www.newcomer.test" in servers and "data-pending-keys" not in servers
