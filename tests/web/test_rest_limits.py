"""REST request limits against a live server of their own (5 a minute, 3 unknown keys a minute).

Each test speaks from loopback addresses of its own (127.0.0.x), so the per-address windows
of different tests never meet.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from keychest.client import LineClient
from tests.web.conftest import LimitedEnv

pytestmark = pytest.mark.timeout(60)


def new_key(env: LimitedEnv) -> str:
    # Made over the line API: REST requests would spend the windows under test.
    with LineClient("127.0.0.1", env.server.line_port) as client:
        reply = client.request("apikey")
    assert reply.ok, reply
    return str(reply.data)


def test_per_address_limit_with_headers(limited_env: LimitedEnv) -> None:
    keys = [new_key(limited_env) for _ in range(limited_env.per_minute + 1)]
    with limited_env.client("127.0.0.31") as client:
        answers = [client.get("/api/v1.0/user", params={"api_key": key}) for key in keys]
    with limited_env.client("127.0.0.32") as other:
        elsewhere = other.get("/api/v1.0/user", params={"api_key": keys[0]})
    assert [a.status_code for a in answers] == [200] * limited_env.per_minute + [429]
    assert [a.headers["X-RateLimit-Limit"] for a in answers] == ["5"] * 6
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0", "0"]
    refused = answers[-1]
    assert refused.json()["status"] == "rate_limited" and "5 requests a minute" in refused.json()["error"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another address has a window of its own (and the key had one request before).
    assert elsewhere.status_code == 200 and elsewhere.headers["X-RateLimit-Remaining"] == "3"


def test_per_key_limit_across_addresses(limited_env: LimitedEnv) -> None:
    key = new_key(limited_env)
    codes = []
    for n in range(limited_env.per_minute + 1):
        # A fresh address each time: only the key's window can run out.
        with limited_env.client(f"127.0.0.{40 + n}") as client:
            answer = client.get("/api/v1.0/servers", params={"api_key": key})
            codes.append((answer.status_code, answer.headers.get("X-RateLimit-Remaining")))
    assert codes == [(200, "4"), (200, "3"), (200, "2"), (200, "1"), (200, "0"), (429, "0")]
    # Another key from the last address is still served.
    with limited_env.client(f"127.0.0.{40 + limited_env.per_minute}") as client:
        assert client.get("/api/v1.0/user", params={"api_key": new_key(limited_env)}).status_code == 200


def test_unknown_keys_are_throttled_per_address(limited_env: LimitedEnv) -> None:
    good = new_key(limited_env)
    with limited_env.client("127.0.0.51") as client:
        guesses = [
            client.get("/api/v1.0/user", params={"api_key": f"guess-{n:02d}-0123456789abcdef"}).status_code
            for n in range(limited_env.failed_keys_per_minute)
        ]
        after = client.get("/api/v1.0/user", params={"api_key": good})
    with limited_env.client("127.0.0.52") as other:
        elsewhere = other.get("/api/v1.0/user", params={"api_key": good})
    assert guesses == [401] * limited_env.failed_keys_per_minute
    # Even a right key is refused from that address for the rest of the minute: a guesser
    # cannot tell a hit from the throttle.
    assert after.status_code == 429 and "unknown API keys" in after.json()["error"]
    assert int(after.headers["Retry-After"]) >= 1
    assert elsewhere.status_code == 200


def test_head_counts_like_get(limited_env: LimitedEnv) -> None:
    key = new_key(limited_env)
    with limited_env.client("127.0.0.61") as client:
        head = client.head("/api/v1.0/user", params={"api_key": key})
        get = client.get("/api/v1.0/user", params={"api_key": key})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["X-RateLimit-Remaining"] == "4" and get.headers["X-RateLimit-Remaining"] == "3"
    assert int(head.headers["content-length"]) == len(get.content)


def test_defaults_are_keychests() -> None:
    # KeyChest allowed 60 requests a minute; ours is the same unless told otherwise.
    done = subprocess.run(
        [sys.executable, "-m", "keychest", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    text = " ".join(done.stdout.split())
    assert re.search(r"KEYCHEST_REST_REQUESTS_PER_MINUTE; default: 60\]", text), text
    assert re.search(r"KEYCHEST_REST_FAILED_KEYS_PER_MINUTE; default: 10\]", text), text
