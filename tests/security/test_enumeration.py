"""Item 2 of the security review: nothing tells a stranger whether an address has an account.

From one client address, a stranger claims keys for four addresses (no account, a confirmed
account, a dormant one and a blocked one) through every front door that takes an email: the
line API, REST's GET and POST claim, REST's "who am I" and add with the key just claimed, and
"mail me a sign-in link". What they see must be the same for all four: status codes, texts
and JSON bodies, apart from the values they chose themselves (the key, the address, a domain).
"""

from __future__ import annotations

import pytest

from tests.security.conftest import Env
from tests.security.support import confirmed_account, http, line, link

pytestmark = pytest.mark.timeout(120)

OWNER = "127.0.0.41"
STRANGER = "127.0.0.42"


def observe(env: Env, email: str, n: int) -> dict[str, object]:
    server = env.server
    seen: dict[str, object] = {}
    key = line(server, STRANGER, "apikey").data
    assert key
    claimed = line(server, STRANGER, "claim", apikey=key, email=email)
    seen["line claim"] = (claimed.ok, claimed.code, claimed.text)
    added = line(server, STRANGER, "add", apikey=key, domain=f"probe{n}.example.net")
    seen["line add"] = (added.ok, added.code, added.text.replace(f"probe{n}", "probe"))
    again = line(server, STRANGER, "claim", apikey=key, email=email)
    seen["line claim again"] = (again.ok, again.code, again.text)
    with http(server, STRANGER) as client:
        answer = client.get(f"/api/v1.0/access/claim/{email}")
        body = answer.json()
        rest_key = body.pop("api_key")
        assert body.pop("user") == email
        seen["rest claim"] = (answer.status_code, body)

        chosen = f"chosen-probe-{n:04d}-7f3a9c2e5b81d4f6a0e9"  # strong enough to be accepted
        answer = client.post("/api/v1.0/access/claim", json={"email": email, "api_key": chosen})
        body = answer.json()
        assert body.pop("api_key") == chosen and body.pop("user") == email
        seen["rest claim chosen"] = (answer.status_code, body)

        answer = client.get("/api/v1.0/user", params={"api_key": rest_key})
        body = answer.json()
        assert body.pop("user") == email and body.pop("key_prefix") == rest_key[:8]
        seen["rest user"] = (answer.status_code, body)

        answer = client.post(
            "/api/v1.0/servers/add", json={"api_key": rest_key, "domain": f"rest{n}.example.net"}
        )
        body = answer.json()
        body.pop("domain"), body.pop("id"), body.pop("key"), body.pop("given")
        seen["rest add"] = (answer.status_code, body)

        answer = client.post("/signin", data={"email": email})
        seen["signin"] = (answer.status_code, answer.headers.get("content-type"), answer.text)
    return seen


def test_a_stranger_sees_the_same_whether_or_not_an_address_has_an_account(env: Env) -> None:
    server, sink = env.server, env.sink
    # The accounts that exist: confirmed, dormant (never confirmed), blocked ("this wasn't me").
    confirmed_account(server, sink, OWNER, "known@enum.example.org")
    key = line(server, OWNER, "apikey").data
    assert line(server, OWNER, "claim", apikey=key, email="dormant@enum.example.org").ok
    key = line(server, OWNER, "apikey").data
    assert line(server, OWNER, "claim", apikey=key, email="blocked@enum.example.org").ok
    mail = sink.wait_to("blocked@enum.example.org", subject="Confirm")
    assert http(server, OWNER).post(link(sink, mail, "/block/")).status_code == 200

    addresses = [
        "nobody@enum.example.org",
        "known@enum.example.org",
        "dormant@enum.example.org",
        "blocked@enum.example.org",
    ]
    seen = {email: observe(env, email, n) for n, email in enumerate(addresses)}
    baseline = seen["nobody@enum.example.org"]
    assert baseline["line claim"] == (True, 200, "claimed; the owner of that address confirms by mail")
    assert baseline["rest claim"] == (200, {"status": "created", "key_state": "pending"})
    for email, what in seen.items():
        for door, answer in what.items():
            assert answer == baseline[door], f"{door} differs for {email}: {answer} != {baseline[door]}"

    # The real owner is told (and only the owner): an approval mail, not a confirmation.
    approve = sink.wait_to("known@enum.example.org", subject="Approve")
    assert approve is not None
    # A blocked address is offered a reopen (issue 10 item 2), once, and gets nothing else:
    # no confirmation, no approval for the stranger's claims.
    sink.wait_to("blocked@enum.example.org", subject="reopen it?")
    later = [str(m["Subject"]) for m in sink.to("blocked@enum.example.org")[1:]]
    assert later == ["You blocked this address on keychest: reopen it?"], later


def test_errors_do_not_depend_on_the_address(env: Env) -> None:
    """A malformed address is refused the same way everywhere, before any lookup."""
    with http(env.server, "127.0.0.43") as client:
        for bad in ("no-at-sign", "a@b", "x@y..z"):
            answer = client.get(f"/api/v1.0/access/claim/{bad}")
            assert answer.status_code == 422 and answer.json()["status"] == "invalid"
            assert client.post("/signin", data={"email": bad}).status_code == 422
