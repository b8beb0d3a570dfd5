"""The REST API v1.0 against a live `keychest serve`: KeyChest's calls, ours, every error path."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.web.conftest import WebEnv

pytestmark = pytest.mark.timeout(120)

KEY_SHAPE = re.compile(r"[A-Za-z0-9-]{16,64}")


def leaf_facts(env: WebEnv, name: str) -> tuple[str, int]:
    """sha256 and not-after (Unix time) of the certificate a test site serves."""
    leaf = env.leaves[name].leaf
    der = leaf.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest(), int(leaf.not_valid_after_utc.timestamp())


def test_ping(web_env: WebEnv) -> None:
    with web_env.client() as client:
        answer = client.get("/api/ping")
    assert answer.status_code == 200 and answer.json() == {"status": "success"}


def test_claim_get_makes_a_key_for_an_email(web_env: WebEnv) -> None:
    with web_env.client() as client:
        answer = client.get("/api/v1.0/access/claim/Claim-Get@Example.org")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "created" and body["user"] == "claim-get@example.org"
    assert KEY_SHAPE.fullmatch(body["api_key"]) and body["key_state"] == "pending"  # until confirmed


def test_claim_post_with_a_chosen_key(web_env: WebEnv) -> None:
    key = "chosen-9f2c41d87a3be5064c1d"  # the rest random enough to clear the strength bar
    with web_env.client() as client:
        first = client.post("/api/v1.0/access/claim", json={"email": "chosen@example.org", "api_key": key})
        again = client.post("/api/v1.0/access/claim", data={"email": "chosen@example.org", "api_key": key})
        other = client.post("/api/v1.0/access/claim", json={"email": "thief@example.org", "api_key": key})
        short = client.post("/api/v1.0/access/claim", json={"email": "x@example.org", "api_key": "short"})
        bad_chars = client.post(
            "/api/v1.0/access/claim", json={"email": "x@example.org", "api_key": "a" * 15 + "!"}
        )
        no_email = client.post("/api/v1.0/access/claim", json={"api_key": "another-key-0123456789"})
        bad_email = client.post(
            "/api/v1.0/access/claim", json={"email": "nobody", "api_key": "another-key-012345"}
        )
        not_json = client.post(
            "/api/v1.0/access/claim", content=b"{nope", headers={"content-type": "application/json"}
        )
        not_object = client.post("/api/v1.0/access/claim", json=["x"])
        not_string = client.post("/api/v1.0/access/claim", json={"email": 5, "api_key": key})
    assert first.status_code == 200 and first.json() == {
        "status": "created",
        "user": "chosen@example.org",
        "api_key": key,
        "key_state": "pending",
    }
    assert again.status_code == 200 and again.json()["status"] == "success"
    # Not confirmed yet: its holder may re-point the claim (issue 10 item 3).
    assert other.status_code == 200 and other.json()["user"] == "thief@example.org"
    for answer in (short, bad_chars, no_email, bad_email, not_json, not_object, not_string):
        assert answer.status_code == 422, answer.text
        assert answer.json()["status"] == "invalid" and answer.json()["error"]


def test_claims_for_one_email_are_rate_limited(web_env: WebEnv) -> None:
    with web_env.client() as client:
        codes = [client.get("/api/v1.0/access/claim/busy@example.org").status_code for _ in range(11)]
    assert codes[:10] == [200] * 10
    assert codes[10] == 429


def test_add_and_expiration_of_a_scanned_domain(web_env: WebEnv) -> None:
    key = web_env.new_key("scanned@example.org")
    domain = web_env.domain("www.alpha.test")
    with web_env.client() as client:
        added = client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": domain.upper()})
        again = client.post("/api/v1.0/servers/add", data={"api_key": key, "domain": domain})
    assert added.status_code == 200
    assert added.json()["status"] == "success" and added.json()["domain"] == domain
    assert added.json()["created"] is True and added.json()["id"]
    assert again.json()["created"] is False and again.json()["id"] == added.json()["id"]

    body = web_env.wait_scanned(key, domain)
    sha, not_after = leaf_facts(web_env, "www.alpha.test")
    assert body["status"] == "success" and body["domain"] == domain
    assert (
        body["certificate_found"] is True and body["renewal_due"] is False and body["expired_found"] is False
    )
    (result,) = body["results"]
    assert result["ip"] == "127.0.0.1"
    assert result["certificate_found"] is True and result["certificate_sha256"] == sha
    assert result["renewal_due"] is False and result["expired"] is False
    assert result["renewal_utc"] == not_after
    assert abs(result["last_scan_utc"] - body["last_scan_utc"]) <= 1
    assert result["state"] == "ok" and result["trusted"] is True and result["hostname_ok"] is True


def test_renewal_due_and_expired(web_env: WebEnv) -> None:
    key = web_env.new_key("due@example.org")
    with web_env.client() as client:
        for name in ("api.alpha.test", "old.alpha.test"):
            client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": web_env.domain(name)})
    due = web_env.wait_scanned(key, web_env.domain("api.alpha.test"))
    gone = web_env.wait_scanned(key, web_env.domain("old.alpha.test"))
    assert due["renewal_due"] is True and due["expired_found"] is False
    assert due["results"][0]["renewal_due"] is True and due["results"][0]["expired"] is False
    assert gone["expired_found"] is True and gone["results"][0]["expired"] is True
    assert gone["results"][0]["renewal_utc"] == leaf_facts(web_env, "old.alpha.test")[1]


def test_expiration_answers_only_for_the_callers_domains(web_env: WebEnv) -> None:
    owner = web_env.new_key("owner-404@example.org")
    stranger = web_env.new_key("stranger-404@example.org")
    domain = web_env.domain("shop.beta.test")
    with web_env.client() as client:
        assert (
            client.post("/api/v1.0/servers/add", json={"api_key": owner, "domain": domain}).status_code == 200
        )
        theirs = client.get(f"/api/v1.0/servers/expiration/{domain}", params={"api_key": stranger})
        unknown = client.get("/api/v1.0/servers/expiration/nowhere.example", params={"api_key": owner})
        invalid = client.get("/api/v1.0/servers/expiration/*.example.org", params={"api_key": owner})
        mine = client.get(f"/api/v1.0/servers/expiration/{domain}", params={"api_key": owner})
    # KeyChest's word for a domain it does not know, with ours beside it; registered by
    # someone else or not at all look the same.
    for answer, name in ((theirs, domain), (unknown, "nowhere.example")):
        assert answer.status_code == 404
        assert {k: answer.json()[k] for k in ("status", "reason", "domain")} == {
            "status": "not-registered",
            "reason": "not_found",
            "domain": name,
        }
    assert invalid.status_code == 422 and "wildcard" in invalid.json()["error"]
    assert invalid.json()["status"] == "invalid-domain" and invalid.json()["reason"] == "invalid"
    assert mine.status_code == 200


def test_every_way_of_giving_the_key(web_env: WebEnv) -> None:
    key = web_env.new_key("transport@example.org")
    basic = base64.b64encode(f"me:{key}".encode()).decode()
    user_only = base64.b64encode(f"{key}:".encode()).decode()
    with web_env.client() as client:
        answers = [
            client.get("/api/v1.0/user", params={"api_key": key}),
            client.get("/api/v1.0/user", headers={"Authorization": f"Bearer {key}"}),
            client.get("/api/v1.0/user", headers={"Authorization": f"Basic {basic}"}),
            client.get("/api/v1.0/user", headers={"Authorization": f"Basic {user_only}"}),
            client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": "transport.example.org"}),
            client.post("/api/v1.0/servers/add", data={"api_key": key, "domain": "transport.example.org"}),
            client.post(
                "/api/v1.0/servers/add", params={"api_key": key}, json={"domain": "transport.example.org"}
            ),
        ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
    assert answers[0].json()["user"] == "transport@example.org"
    assert answers[0].json()["key_prefix"] == key[:8]


def test_missing_unknown_and_revoked_keys(web_env: WebEnv) -> None:
    key = web_env.new_key("revoker@example.org")
    with web_env.client() as client:
        missing = client.get("/api/v1.0/user")
        unknown = client.get("/api/v1.0/user", params={"api_key": "no-such-key-0123456789"})
        malformed = client.get("/api/v1.0/user", params={"api_key": "!"})
        bad_basic = client.get("/api/v1.0/user", headers={"Authorization": "Basic %%%"})
        add_missing = client.post("/api/v1.0/servers/add", json={"domain": "example.org"})
        revoked = client.post("/api/v1.0/access/revoke", params={"api_key": key})
        after = client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": "example.org"})
        revoke_unknown = client.post("/api/v1.0/access/revoke", json={"api_key": "no-such-key-0123456789"})
    for answer in (missing, unknown, malformed, bad_basic, add_missing, revoke_unknown):
        assert answer.status_code == 401, answer.text
        assert answer.json()["status"] == "unauthorized"
    assert revoked.status_code == 200 and revoked.json() == {"status": "revoked", "key_prefix": key[:8]}
    assert after.status_code == 403 and after.json() == {"status": "forbidden", "error": "API key revoked"}


def test_invalid_input_answers_422(web_env: WebEnv) -> None:
    key = web_env.new_key("invalid@example.org")
    with web_env.client() as client:
        answers = {
            "bad email": client.get("/api/v1.0/access/claim/not-an-address"),
            "fastapi's own": client.get("/api/v1.0/servers", params={"api_key": key, "limit": "many"}),
            "range": client.get("/api/v1.0/servers", params={"api_key": key, "limit": 0}),
        }
    for what, answer in answers.items():
        assert answer.status_code == 422, what
        assert answer.json()["status"] == "invalid" and answer.json()["error"], what
    assert "limit" in answers["fastapi's own"].json()["error"]
    # servers/add says it in KeyChest's word, ours beside it.
    with web_env.client() as client:
        refused = {
            "no domain": client.post("/api/v1.0/servers/add", json={"api_key": key}),
            "empty domain": client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": ""}),
            "other scheme": client.post(
                "/api/v1.0/servers/add", json={"api_key": key, "domain": "gopher://x.org/"}
            ),
            "port": client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": "x.org:99999"}),
        }
    for what, answer in refused.items():
        assert answer.status_code == 422, what
        body = answer.json()
        assert (body["status"], body["reason"]) == ("invalid-domain", "invalid") and body["error"], what


def test_unknown_routes_and_methods_answer_json(web_env: WebEnv) -> None:
    with web_env.client() as client:
        missing = client.get("/api/v1.0/nothing-here")
        method = client.get("/api/v1.0/servers/add")
        wrong = client.put("/api/v1.0/servers/add")
    assert missing.status_code == 404 and missing.json()["status"] == "not_found"
    # GET servers/add reads as a lookup of no domain: still a JSON 4xx, never HTML.
    assert method.status_code in (404, 405) and "status" in method.json()
    assert wrong.status_code == 405 and wrong.json()["status"] == "method_not_allowed"


def test_list_lookup_and_remove(web_env: WebEnv) -> None:
    key = web_env.new_key("lister@example.org")
    other_key_same_account = web_env.new_key("lister@example.org")  # pending: not approved
    domain = web_env.domain("www.alpha.test")
    with web_env.client() as client:
        for name in (domain, "list-b.example.org", "list-c.example.org"):
            client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": name})
        web_env.wait_scanned(key, domain)
        listed = client.get("/api/v1.0/servers", params={"api_key": key}).json()
        paged = client.get("/api/v1.0/servers", params={"api_key": key, "limit": 1, "offset": 1}).json()
        lookup = client.get(f"/api/v1.0/servers/lookup/{domain}", params={"api_key": key})
        pending_sees = client.get("/api/v1.0/servers", params={"api_key": other_key_same_account}).json()
        removed = client.post(
            "/api/v1.0/servers/remove", json={"api_key": key, "domain": "list-b.example.org"}
        )
        deleted = client.delete("/api/v1.0/servers/list-c.example.org", params={"api_key": key})
        again = client.delete("/api/v1.0/servers/list-c.example.org", params={"api_key": key})
        after = client.get("/api/v1.0/servers", params={"api_key": key}).json()
    assert [s["domain"] for s in listed["servers"]] == sorted(
        [domain, "list-b.example.org", "list-c.example.org"]
    )
    scanned = next(s for s in listed["servers"] if s["domain"] == domain)
    assert scanned["state"] == "ok" and scanned["addresses"] == 1 and scanned["earliest_expiry_utc"]
    assert [s["domain"] for s in paged["servers"]] == ["list-c.example.org"]  # sorted by name
    assert lookup.status_code == 200
    assert lookup.json()["server"]["domain"] == domain
    assert lookup.json()["expiration"]["results"][0]["certificate_found"] is True
    assert pending_sees["servers"] == []  # a pending key sees only its own registrations
    assert removed.status_code == 200 and removed.json() == {
        "status": "success",
        "domain": "list-b.example.org",
    }
    assert deleted.status_code == 200
    assert again.status_code == 404
    assert [s["domain"] for s in after["servers"]] == [domain]


def test_watch_a_pem_certificate(web_env: WebEnv) -> None:
    key = web_env.new_key("pem@example.org")
    leaf = web_env.certs.valid("pem-only.example.org", days=45)
    pem = leaf.leaf.public_bytes(serialization.Encoding.PEM).decode()
    chain_pem = leaf.chain_pem.decode() + web_env.certs.ca.cert_pem.bytes().decode()
    with web_env.client() as client:
        added = client.post("/api/v1.0/certificate/add", json={"api_key": key, "certificate": pem})
        again = client.post("/api/v1.0/certificate/add", data={"api_key": key, "certificate": pem})
        two = client.post("/api/v1.0/certificate/add", json={"api_key": key, "certificate": chain_pem})
        junk = client.post("/api/v1.0/certificate/add", json={"api_key": key, "certificate": "hello"})
        private = client.post(
            "/api/v1.0/certificate/add", json={"api_key": key, "certificate": leaf.key_pem.decode()}
        )
        missing = client.post("/api/v1.0/certificate/add", json={"api_key": key})
        listed = client.get("/api/v1.0/certificates", params={"api_key": key}).json()
        sha = added.json()["sha256"]
        detail = client.get(f"/api/v1.0/certificates/{sha}", params={"api_key": key})
        stranger = client.get(
            f"/api/v1.0/certificates/{sha}", params={"api_key": web_env.new_key("s@example.org")}
        )
    expected = x509.load_pem_x509_certificate(pem.encode())
    assert added.status_code == 200 and added.json()["created"] is True
    assert added.json()["not_after_utc"] == int(expected.not_valid_after_utc.timestamp())
    assert added.json()["status"] == "success" and added.json()["key"] == added.json()["sha256"]
    assert again.json()["created"] is False and again.json()["id"] == added.json()["id"]
    assert again.status_code == 200 and again.json()["status"] == "already-inserted"  # KeyChest's word
    assert two.status_code == 422 and two.json()["status"] == "single-cert-expected"
    assert two.json()["reason"] == "invalid"
    for answer in (junk, private, missing):
        assert answer.status_code == 422 and answer.json()["status"] == "invalid", answer.text
    assert "one certificate" in two.json()["error"] and "private key" in private.json()["error"]
    assert [(c["sha256"], c["watched"]) for c in listed["certificates"]] == [(sha, True)]
    assert listed["certificates"][0]["subject_alt_names"] == ["pem-only.example.org"]
    assert detail.status_code == 200 and detail.json()["pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert detail.json()["deployments"] == []
    assert stranger.status_code == 404


def test_certificates_seen_on_servers(web_env: WebEnv) -> None:
    key = web_env.new_key("certs-seen@example.org")
    domain = web_env.domain("www.alpha.test")
    with web_env.client() as client:
        client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": domain})
        web_env.wait_scanned(key, domain)
        listed = client.get("/api/v1.0/certificates", params={"api_key": key}).json()
        sha = leaf_facts(web_env, "www.alpha.test")[0]
        detail = client.get(f"/api/v1.0/certificates/{sha}", params={"api_key": key}).json()
    assert sha in [c["sha256"] for c in listed["certificates"]]
    assert detail["deployments"] == [
        {
            "domain": domain,
            "ip": "127.0.0.1",
            "state": "ok",
            "since_utc": detail["deployments"][0]["since_utc"],
            "last_scan_utc": detail["deployments"][0]["last_scan_utc"],
        }
    ]
    assert detail["chain"][0] == sha and len(detail["chain"]) >= 1


def test_openapi_and_docs(web_env: WebEnv) -> None:
    with web_env.client() as client:
        schema = client.get("/openapi.json").json()
        docs = client.get("/docs")
    for path in (
        "/api/v1.0/access/claim/{email}",
        "/api/v1.0/access/claim",
        "/api/v1.0/servers/add",
        "/api/v1.0/servers/expiration/{domain}",
        "/api/v1.0/user",
        "/api/v1.0/certificate/add",
    ):
        assert path in schema["paths"], path
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def curl(*args: str) -> dict:
    done = subprocess.run(
        ["curl", "-s", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_keychest_documented_curl_calls_work_unchanged(web_env: WebEnv) -> None:
    """The three calls of KeyChest's published API documentation, as real curl commands."""
    base = f"{web_env.url}/api/v1.0"
    claimed = curl(f"{base}/access/claim/me@example.org")
    assert claimed["status"] == "created" and claimed["user"] == "me@example.org"
    key = claimed["api_key"]
    domain = web_env.domain("www.alpha.test")
    added = curl(
        "-X", "POST", "-H", "Content-Type: application/json",
        "-d", json.dumps({"api_key": key, "domain": domain}), f"{base}/servers/add",
    )  # fmt: skip
    assert added["status"] == "success" and added["domain"] == domain and added["id"]
    web_env.wait_scanned(key, domain)
    answer = curl(f"{base}/servers/expiration/{domain}?api_key={key}")
    assert {
        "status",
        "domain",
        "certificate_found",
        "renewal_due",
        "expired_found",
        "results",
    } <= answer.keys()
    assert answer["status"] == "success" and answer["certificate_found"] is True
    assert set(answer["results"][0]) >= {
        "ip",
        "certificate_found",
        "certificate_sha256",
        "renewal_due",
        "expired",
        "renewal_utc",
        "last_scan_utc",
    }
    # The documentation's own example writes `&api_key=` where `?` belongs; that works too.
    again = curl(f"{base}/servers/expiration/{domain}&api_key={key}")
    assert again["status"] == "success" and again["results"] == answer["results"]
    # POST access/claim with a chosen key, as documented.
    chosen = curl(
        "-X", "POST", "-H", "Content-Type: application/json",
        "-d", json.dumps({"email": "me2@example.org", "api_key": "5b9b6aceb95011e7bb9f7fca73a26228"}),
        f"{base}/access/claim",
    )  # fmt: skip
    assert chosen == {
        "status": "created",
        "user": "me2@example.org",
        "api_key": "5b9b6aceb95011e7bb9f7fca73a26228",
        "key_state": "pending",
    }
