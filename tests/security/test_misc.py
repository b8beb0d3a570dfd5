"""What else a careful reviewer checks: oversized bodies, header injection through an address,
markup injection in pages, and where a request may send a browser next."""

from __future__ import annotations

import pytest

from tests.security.conftest import Env
from tests.security.support import confirmed_account, csrf_of, http

pytestmark = pytest.mark.timeout(120)

BIG = 1024 * 1024


def test_oversized_bodies_are_refused_before_being_read(env: Env) -> None:
    with http(env.server, "127.0.0.111") as client:
        answer = client.post(
            "/api/v1.0/servers/add",
            content=b"{" + b" " * BIG + b"}",
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 413 and answer.json()["status"] == "too_large"
        # Chunked: no Content-Length to judge by; cut off while streaming.
        answer = client.post(
            "/api/v1.0/access/claim",
            content=iter([b"x" * 65536] * 16),
            headers={"content-type": "text/plain"},
        )
        assert answer.status_code == 413
        # The HTML forms too (no session needed to reach /signin).
        assert client.post("/signin", content=b"email=" + b"a" * BIG).status_code == 413
        # Ordinary requests still work.
        assert client.post("/signin", data={"email": "small@misc.example.org"}).status_code == 200


@pytest.mark.parametrize(
    "address",
    [
        "victim@example.org\r\nBcc: all@example.org",
        "victim@example.org\nSubject: hi",
        "victim@example.org%0d%0aBcc:x@example.org",
        "Victim <victim@example.org>",
        "victim@example.org, other@example.org",
    ],
)
def test_no_header_injection_through_an_address(env: Env, address: str) -> None:
    with http(env.server, "127.0.0.112") as client:
        answer = client.post(
            "/api/v1.0/access/claim", json={"email": address, "api_key": "inject-key-0123456789abc"}
        )
        assert answer.status_code == 422, answer.text
        assert client.post("/signin", data={"email": address}).status_code == 422


def test_typed_markup_is_escaped_on_pages(env: Env) -> None:
    alice = confirmed_account(env.server, env.sink, "127.0.0.113", "markup@misc.example.org")
    token = csrf_of(alice.session.get("/servers"))
    answer = alice.session.post("/servers/add", data={"csrf": token, "domain": '"><script>alert(1)</script>'})
    # Refused: back to the form by a redirect, which shows the refusal and what was typed.
    assert answer.status_code == 303
    answer = alice.session.get(answer.headers["location"])
    assert 'role="alert"' in answer.text
    assert "<script>alert(1)</script>" not in answer.text
    assert "&lt;script&gt;" in answer.text or "&#34;&gt;&lt;script" in answer.text
    answer = alice.session.get("/servers", params={"q": "<img src=x onerror=alert(1)>"})
    assert answer.status_code == 200 and "<img src=x" not in answer.text
