"""KeyChest v1.0 clients against the live server: the inputs the original accepted, its
status words beside ours, and the calls shaped like its own (real curl where its users
would use it, `curl -F` included)."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from tests.scan.tls_servers import TestServers
from tests.support.swap_tls import SwappableTLS, sha256_of
from tests.web.conftest import WebEnv

pytestmark = pytest.mark.timeout(120)


def curl(*args: str) -> tuple[int, dict]:
    done = subprocess.run(
        ["curl", "-s", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    body, _, code = done.stdout.rpartition("\n")
    return int(code), json.loads(body)


def test_servers_add_normalises_urls_and_wildcards(web_env: WebEnv) -> None:
    key = web_env.new_key("normalise@example.org")
    add = f"{web_env.url}/api/v1.0/servers/add"
    # As KeyChest's users sent them: a form through curl -F (multipart), and JSON.
    url_code, url = curl("-F", f"api_key={key}", "-F", "domain=https://Shop.Example.net/path?x=1", add)
    wild_code, wild = curl(
        "-H", "Content-Type: application/json",
        "-d", json.dumps({"api_key": key, "domain": "*.wild.example.net"}), add,
    )  # fmt: skip
    port_code, port = curl("-F", f"api_key={key}", "-F", "domain=http://x.example.net:8443/", add)
    plain_code, plain = curl("-F", f"api_key={key}", "-F", "domain=plain.example.net", add)
    ftp_code, ftp = curl("-F", f"api_key={key}", "-F", "domain=gopher://files.example.net/", add)
    assert url_code == 200 and url["domain"] == "shop.example.net" and url["key"] == "shop.example.net:443"
    assert url["given"] == "https://Shop.Example.net/path?x=1"
    assert any("https:// dropped" in change for change in url["changes"])
    assert any("path /path?x=1 dropped" in change for change in url["changes"])
    assert wild_code == 200 and wild["domain"] == "wild.example.net"
    assert [c for c in wild["changes"] if "wildcard" in c] and len(wild["changes"]) == 1
    assert port_code == 200 and port["domain"] == "x.example.net:8443"
    assert plain_code == 200 and plain["changes"] == [] and plain["given"] == "plain.example.net"
    # A scheme we do not know is refused, in KeyChest's word and ours (smtp://, imap://... are
    # targets of their own: tests/service/test_protocol_registration.py).
    assert ftp_code == 422 and (ftp["status"], ftp["reason"]) == ("invalid-domain", "invalid")
    assert ftp["domain"] == "gopher://files.example.net/" and "gopher" in ftp["error"]
    with web_env.client() as client:
        listed = client.get("/api/v1.0/servers", params={"api_key": key}).json()["servers"]
    assert {s["domain"] for s in listed} == {
        "shop.example.net",
        "wild.example.net",
        "x.example.net:8443",
        "plain.example.net",
    }


def test_multipart_files_and_trimmed_values(web_env: WebEnv, tmp_path: Path) -> None:
    key = web_env.new_key("multipart@example.org")
    key_file = tmp_path / "apikey"
    key_file.write_text(key + "\n")  # as `echo $KEY > apikey` leaves it
    leaf = web_env.certs.valid("multipart.example.org", days=30)
    pem_file = tmp_path / "cert.pem"
    pem_file.write_bytes(leaf.leaf.public_bytes(serialization.Encoding.PEM))
    code, added = curl(
        "-F", f"api_key=<{key_file}", "-F", f"certificate=@{pem_file}",
        f"{web_env.url}/api/v1.0/certificate/add",
    )  # fmt: skip
    assert code == 200 and added["status"] == "success" and added["key"] == added["sha256"]
    with web_env.client() as client:
        spaced_query = client.get("/api/v1.0/user", params={"api_key": f"  {key}\n"})
        spaced_json = client.post(
            "/api/v1.0/servers/add", json={"api_key": f"{key}\r\n", "domain": "  trimmed.example.net \n"}
        )
        spaced_form = client.post(
            "/api/v1.0/servers/add", data={"api_key": f"{key}\n", "domain": "form.example.net "}
        )
    assert spaced_query.status_code == 200 and spaced_query.json()["user"] == "multipart@example.org"
    assert spaced_json.status_code == 200 and spaced_json.json()["domain"] == "trimmed.example.net"
    assert spaced_form.status_code == 200 and spaced_form.json()["domain"] == "form.example.net"


def test_unused_fields_of_any_json_type_are_ignored(web_env: WebEnv) -> None:
    key = web_env.new_key("json-types@example.org")
    with web_env.client() as client:
        added = client.post(
            "/api/v1.0/servers/add",
            json={
                "api_key": key,
                "domain": "types.example.net",
                "port": 443,
                "verbose": True,
                "tags": ["a", 1],
                "meta": {"client": "keychest-sh", "version": 2.1},
                "note": None,
            },
        )
        used_as_number = client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": 443})
    assert added.status_code == 200 and added.json()["domain"] == "types.example.net"
    assert used_as_number.status_code == 422 and "domain must be a string" in used_as_number.json()["error"]


def test_deeply_nested_json_is_a_400_in_the_error_shape(web_env: WebEnv) -> None:
    deep = b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with web_env.client() as client:
        answer = client.post(
            "/api/v1.0/servers/add", content=deep, headers={"content-type": "application/json"}
        )
        # The server is fine afterwards.
        ping = client.get("/api/ping")
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"status": "bad_request", "error": "the JSON body is nested too deeply"}
    assert ping.status_code == 200


def test_expiration_ip_filter_and_request_id(web_env: WebEnv) -> None:
    key = web_env.new_key("expiration-ip@example.org")
    domain = web_env.domain("www.alpha.test")
    base = f"/api/v1.0/servers/expiration/{domain}"
    with web_env.client() as client:
        client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": domain})
        web_env.wait_scanned(key, domain)
        everything = client.get(base, params={"api_key": key}).json()
        mine = client.get(base, params={"api_key": key, "ip": "127.0.0.1", "request_id": "job-42"})
        other = client.get(base, params={"api_key": key, "ip": "192.0.2.7"})
        bad_ip = client.get(base, params={"api_key": key, "ip": "not-an-ip", "request_id": "r1"})
        long_id = client.get(base, params={"api_key": key, "request_id": "x" * 65})
        unknown = client.get(
            "/api/v1.0/servers/expiration/nowhere.example", params={"api_key": key, "request_id": "r2"}
        )
    assert "ip" not in everything and "request_id" not in everything
    assert mine.status_code == 200
    body = mine.json()
    assert (body["ip"], body["request_id"], body["domain"]) == ("127.0.0.1", "job-42", domain)
    assert [r["ip"] for r in body["results"]] == ["127.0.0.1"] and body["certificate_found"] is True
    assert other.status_code == 200
    assert other.json()["results"] == [] and other.json()["certificate_found"] is False
    assert other.json()["ip"] == "192.0.2.7"
    assert bad_ip.status_code == 422 and bad_ip.json()["request_id"] == "r1"
    assert long_id.status_code == 422
    assert unknown.status_code == 404
    assert {k: unknown.json()[k] for k in ("status", "reason", "domain", "request_id")} == {
        "status": "not-registered",
        "reason": "not_found",
        "domain": "nowhere.example",
        "request_id": "r2",
    }


def test_certificate_add_takes_base64_der(web_env: WebEnv, tmp_path: Path) -> None:
    key = web_env.new_key("der@example.org")
    leaf = web_env.certs.valid("der-only.example.org", days=60)
    der = leaf.leaf.public_bytes(serialization.Encoding.DER)
    b64 = base64.b64encode(der).decode()
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))  # as `base64` prints it
    der_file = tmp_path / "cert.b64"
    der_file.write_text(wrapped + "\n")
    with web_env.client() as client:
        one_line = client.post("/api/v1.0/certificate/add", json={"api_key": key, "certificate": b64})
    code, from_file = curl(
        "-F", f"api_key={key}", "-F", f"certificate=<{der_file}", f"{web_env.url}/api/v1.0/certificate/add"
    )
    assert one_line.status_code == 200 and one_line.json()["status"] == "success"
    assert one_line.json()["key"] == one_line.json()["sha256"] == sha256_of(leaf)
    assert code == 200 and from_file["status"] == "already-inserted" and from_file["created"] is False
    assert from_file["id"] == one_line.json()["id"]


def test_claim_with_a_chosen_key_in_the_query_string(web_env: WebEnv) -> None:
    # KeyChest's api.md: GET access/claim?email=...&api_key=... (the POST form's twin).
    key = str(uuid.uuid4())
    base = f"{web_env.url}/api/v1.0/access/claim"
    code, first = curl(f"{base}?email=query-claim@example.org&api_key={key}")
    again_code, again = curl(f"{base}?email=query-claim@example.org&api_key={key}")
    head = httpx.head(f"{base}?email=query-head@example.org&api_key={uuid.uuid4()}")
    assert code == 200 and (first["status"], first["api_key"], first["user"]) == (
        "created",
        key,
        "query-claim@example.org",
    )
    assert again_code == 200 and again["status"] == "success"
    assert head.status_code == 405


def test_claim_words(web_env: WebEnv) -> None:
    key = web_env.new_key("claim-words@example.org")
    with web_env.client() as client:
        assert client.post("/api/v1.0/access/revoke", json={"api_key": key}).status_code == 200
        revoked = client.post(
            "/api/v1.0/access/claim", json={"email": "claim-words@example.org", "api_key": key}
        )
        codes = []
        for _ in range(12):
            answer = client.get("/api/v1.0/access/claim/too-many@example.org")
            codes.append(answer.status_code)
            if answer.status_code == 429:
                break
    assert revoked.status_code == 403
    assert (revoked.json()["status"], revoked.json()["reason"]) == ("not-allowed", "forbidden")
    assert codes[-1] == 429
    assert (answer.json()["status"], answer.json()["reason"]) == ("too-many", "rate_limited")


def test_chosen_keys_must_be_as_strong_as_generated_ones(web_env: WebEnv) -> None:
    weak = ["aaaaaaaaaaaaaaaa", "a" * 64, "0123456789abcdef0123", "abab" * 10, "my-api-key-for-server-1"]
    strong = [
        secrets.token_hex(20),
        str(uuid.uuid4()),
        "5b9b6aceb95011e7bb9f7fca73a26228",
        secrets.token_hex(32),
    ]
    with web_env.client() as client:
        refused = {
            k: client.post("/api/v1.0/access/claim", json={"email": "weak@example.org", "api_key": k})
            for k in weak
        }
        accepted = {
            k: client.post("/api/v1.0/access/claim", json={"email": "strong@example.org", "api_key": k})
            for k in strong
        }
        # A refused key was not registered.
        unknown = client.get("/api/v1.0/user", params={"api_key": "aaaaaaaaaaaaaaaa"})
    for k, answer in refused.items():
        assert answer.status_code == 422, k
        assert "too easy to guess" in answer.json()["error"], k
    for k, answer in accepted.items():
        assert answer.status_code == 200 and answer.json()["api_key"] == k, (k, answer.text)
    assert unknown.status_code == 401


def test_head_where_get_works(web_env: WebEnv) -> None:
    key = web_env.new_key("head@example.org")
    with web_env.client() as client:
        for path, params in (
            ("/api/ping", {}),
            ("/api/v1.0/user", {"api_key": key}),
            ("/api/v1.0/servers", {"api_key": key}),
            ("/healthz", {}),
            ("/signin", {}),
        ):
            get = client.get(path, params=params)
            head = client.head(path, params=params)
            assert get.status_code == 200, path
            assert head.status_code == 200 and head.content == b"", path
            assert head.headers["content-type"] == get.headers["content-type"], path
        # Not a way round a route's rules: HEAD answers what GET would.
        assert client.head("/api/v1.0/user").status_code == 401
        # Nor a way to act: the claim GET makes a key and sends a mail, so HEAD does not run it.
        claim = client.head("/api/v1.0/access/claim/head-claim@example.org")
        assert claim.status_code == 405 and claim.headers["Allow"] == "GET"
    # The HEAD finished before this listing (its answer came back): no account was made.
    accounts = web_env.server.cli("accounts", "--json")
    assert accounts.returncode == 0, accounts.stderr
    assert "head-claim@example.org" not in accounts.stdout and "head@example.org" in accounts.stdout


def test_api_index_and_unknown_paths_point_at_the_docs(web_env: WebEnv) -> None:
    with web_env.client() as client:
        index = client.get("/api/v1.0/")
        unknown = client.get("/api/v1.0/no/such/call")
        other_version = client.post("/api/v2/servers/add")
        docs = client.get(index.json()["html_docs"])
    assert index.status_code == 200
    assert index.json() == {
        "status": "success",
        "html_docs": f"{web_env.url}/docs",
        "openapi": f"{web_env.url}/openapi.json",
    }
    for answer in (unknown, other_version):
        assert answer.status_code == 404
        assert answer.json() == {
            "status": "not_found",
            "error": "endpoint not found",
            "html_docs": f"{web_env.url}/docs",
        }
    assert docs.status_code == 200


def test_rescan_sees_a_swapped_certificate_within_seconds(web_env: WebEnv) -> None:
    key = web_env.new_key("rescan@example.org")
    stranger = web_env.new_key("rescan-stranger@example.org")
    first = web_env.certs.valid("www.alpha.test", days=20)
    renewed = web_env.certs.valid("www.alpha.test", days=89)
    with TestServers() as servers:
        site = SwappableTLS(servers, first)
        domain = f"www.alpha.test:{site.port}"
        with web_env.client() as client:
            client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": domain})
            seen = web_env.wait_scanned(key, domain)
            assert seen["results"][0]["certificate_sha256"] == sha256_of(first)
            site.swap(renewed)
            refused = client.post("/api/v1.0/servers/rescan", json={"api_key": stranger, "domain": domain})
            asked = time.monotonic()
            rescan = client.post("/api/v1.0/servers/rescan", data={"api_key": key, "domain": domain})
            assert rescan.status_code == 200, rescan.text
            while True:
                now = client.get(f"/api/v1.0/servers/expiration/{domain}", params={"api_key": key}).json()
                if now["results"][0]["certificate_sha256"] == sha256_of(renewed):
                    break
                assert time.monotonic() - asked < 10, "the renewal was not seen within 10 s of servers/rescan"
                time.sleep(0.2)
    took = time.monotonic() - asked
    assert rescan.json()["domain"] == domain and rescan.json()["last_scan_utc"] == seen["last_scan_utc"]
    assert refused.status_code == 404
    print(f"renewal seen {took:.2f} s after servers/rescan")


def test_original_clients_status_codes_are_documented(web_env: WebEnv) -> None:
    # Every word docs/rest.md promises for KeyChest clients appears in it, with the difference list.
    text = (Path(__file__).parents[2] / "docs" / "rest.md").read_text()
    for word in (
        "not-registered",
        "invalid-domain",
        "single-cert-expected",
        "already-inserted",
        "not-allowed",
        "too-many",
    ):
        assert f"`{word}`" in text, word
    assert "## Differences from KeyChest" in text
    assert httpx.get(f"{web_env.url}/api/ping").status_code == 200
