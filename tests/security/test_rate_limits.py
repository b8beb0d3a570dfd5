"""Item 3 of the security review: the abuse limits hold at the real front doors.

One `keychest serve` with small limits; each test speaks from 127.0.0.x addresses of its own,
so the per-address counters of one test never touch another's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.notify.smtp import SmtpSink
from tests.security.support import http, line
from tests.support.net import wait_for_port
from tests.support.server import LiveServer, start_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with SmtpSink() as sink:
        live = start_server(
            Path(tmp_path_factory.mktemp("limits")),
            "--smtp", sink.address,
            "--keys-per-ip-per-hour", "5",
            "--apikey-burst", "3",
            "--claims-per-ip-per-hour", "4",
            "--claims-per-email-per-day", "2",
        )  # fmt: skip
        wait_for_port(live.http_port)
        try:
            yield live
        finally:
            live.stop()


def test_apikey_burst_on_the_line_api(server: LiveServer) -> None:
    replies = [line(server, "127.0.0.51", "apikey") for _ in range(4)]
    assert [r.code for r in replies] == [200, 200, 200, 429]
    assert "slow down" in replies[3].text
    # Another address is not affected.
    assert line(server, "127.0.0.50", "apikey").ok


def test_hourly_key_quota_is_shared_by_the_line_api_and_rest(server: LiveServer) -> None:
    source = "127.0.0.52"
    assert all(line(server, source, "apikey").ok for _ in range(2))  # under the burst
    with http(server, source) as client:
        for n in range(3):
            answer = client.get(f"/api/v1.0/access/claim/quota{n}@limits.example.org")
            assert answer.status_code == 200, answer.text
        refused = client.get("/api/v1.0/access/claim/quota9@limits.example.org")
        chosen = client.post(
            "/api/v1.0/access/claim",
            json={"email": "quota9@limits.example.org", "api_key": "chosen-quota-key-7f3a9c2e5b81d4f6a0"},
        )
    # KeyChest's word for a claim quota, ours beside it (docs/rest.md).
    assert refused.status_code == 429 and refused.json()["status"] == "too-many"
    assert refused.json()["reason"] == "rate_limited"
    assert "too many new API keys" in refused.json()["error"]
    assert chosen.status_code == 429
    reply = line(server, source, "apikey")
    assert reply.code == 429 and "too many new API keys" in reply.text


def test_claims_per_client_address_per_hour(server: LiveServer) -> None:
    # Keys made elsewhere (keys are not tied to an address); claims sprayed from one address.
    keys = [line(server, "127.0.0.54", "apikey").data for _ in range(3)]
    keys += [line(server, "127.0.0.55", "apikey").data for _ in range(3)]
    source = "127.0.0.53"
    replies = [
        line(server, source, "claim", apikey=str(key), email=f"spray{n}@limits.example.org")
        for n, key in enumerate(keys[:5])
    ]
    assert [r.code for r in replies] == [200, 200, 200, 200, 429]
    assert "too many claims from your address" in replies[4].text
    with http(server, source) as client:
        answer = client.post(
            "/api/v1.0/access/claim",
            json={"email": "spray9@limits.example.org", "api_key": "chosen-spray-key-7f3a9c2e5b81d4f6a0"},
        )
    assert answer.status_code == 429 and "too many claims" in answer.json()["error"]
    # The refused claims left nothing behind: the chosen key was not registered either.
    assert (
        line(server, "127.0.0.56", "add", apikey="chosen-spray-key-7f3a9c2e5b81d4f6a0", domain="x.test").code
        == 401
    )
    # Another address may still claim.
    assert line(server, "127.0.0.57", "claim", apikey=str(keys[5]), email="spray5@limits.example.org").ok


def test_claims_per_email_per_day_count_per_client_address(server: LiveServer) -> None:
    # Issue 10 item 10: a stranger spending the day's claims for an address does not lock out
    # its owner, who claims from another address.
    stranger, owner = "127.0.0.60", "127.0.0.61"
    codes = []
    for _ in range(3):
        key = line(server, stranger, "apikey").data
        codes.append(
            line(server, stranger, "claim", apikey=str(key), email="popular@limits.example.org").code
        )
    assert codes == [200, 200, 429]
    key = line(server, owner, "apikey").data
    assert line(server, owner, "claim", apikey=str(key), email="popular@limits.example.org").code == 200


def test_signin_mails_per_client_address(server: LiveServer) -> None:
    with http(server, "127.0.0.65") as client:
        codes = [
            client.post("/signin", data={"email": f"who{n}@limits.example.org"}).status_code
            for n in range(11)
        ]
    assert codes == [200] * 10 + [429]


def test_signin_mails_per_address_from_any_client(server: LiveServer) -> None:
    codes = []
    for n in range(4):
        with http(server, f"127.0.0.{70 + n}") as client:
            codes.append(client.post("/signin", data={"email": "target@limits.example.org"}).status_code)
    assert codes == [200, 200, 200, 429]
