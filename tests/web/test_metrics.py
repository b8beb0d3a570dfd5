"""/metrics: per-address gauges read from the database, in-process counters of line requests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keychest.client import LineClient
from tests.web.conftest import SITES, LimitedEnv, WebEnv
from tests.web.test_rest import leaf_facts

pytestmark = pytest.mark.timeout(120)


def scrape(env: WebEnv) -> dict[str, list]:
    with env.client() as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(answer.text)}


def test_every_scanned_address_has_its_not_after(web_env: WebEnv) -> None:
    key = web_env.new_key("metrics@example.org")
    with web_env.client() as client:
        for name in SITES:
            client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": web_env.domain(name)})
    for name in SITES:
        web_env.wait_scanned(key, web_env.domain(name))
    families = scrape(web_env)
    not_after = {
        (s.labels["host"], int(s.labels["port"]), s.labels["ip"]): s.value
        for s in families["keychest_ssl_cert_not_after_timestamp_seconds"]
    }
    for name in SITES:
        assert not_after[(name, web_env.ports[name], "127.0.0.1")] == leaf_facts(web_env, name)[1]

    def value(family: str, name: str) -> float:
        labels = {"host": name, "port": str(web_env.ports[name]), "ip": "127.0.0.1"}
        return next(s.value for s in families[family] if s.labels == labels)

    assert value("keychest_probe_success", "www.alpha.test") == 1
    assert value("keychest_ssl_cert_trusted", "www.alpha.test") == 1
    assert value("keychest_ssl_cert_hostname_ok", "www.alpha.test") == 1
    assert 88 < value("keychest_ssl_cert_days_left", "www.alpha.test") <= 90
    # Issue 11 item 7: the documented days_left (floor), the "4 days" of the dashboard and mails.
    assert value("keychest_ssl_cert_days_left", "api.alpha.test") == 4
    assert value("keychest_ssl_cert_days_left", "old.alpha.test") < 0
    assert value("keychest_probe_duration_seconds", "www.alpha.test") > 0
    # Scans done by this process's scanner are counted and timed too.
    assert sum(s.value for s in families["keychest_scans"] if s.name == "keychest_scans_total") >= len(SITES)
    assert any(
        s.name == "keychest_scan_duration_seconds_count" and s.value >= 1
        for s in families["keychest_scan_duration_seconds"]
    )


def test_down_endpoint_and_scan_errors(web_env: WebEnv) -> None:
    key = web_env.new_key("metrics-down@example.org")
    with web_env.client() as client:
        # Nothing listens on port 1 of 127.0.0.1: connection refused.
        client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": "www.alpha.test:1"})
    web_env.wait_scanned(key, "www.alpha.test:1")
    families = scrape(web_env)
    down = [s for s in families["keychest_probe_success"] if s.labels["port"] == "1"]
    assert [s.value for s in down] == [0]
    assert not [
        s for s in families["keychest_ssl_cert_not_after_timestamp_seconds"] if s.labels["port"] == "1"
    ]
    assert any(s.labels.get("kind") == "refused" for s in families["keychest_scan_errors"])


def test_line_requests_by_command_and_code(web_env: WebEnv) -> None:
    with LineClient("127.0.0.1", web_env.server.line_port) as client:
        assert client.request("ping").ok
        assert client.request("expiration", apikey="no-such-key-0123456789", domain="x.example").code == 401
        client.request("frobnicate")
    with web_env.client() as http:
        text = http.get("/metrics").text
    assert re.search(r'keychest_line_requests_total\{code="200",command="ping"\} [1-9]', text)
    assert re.search(r'keychest_line_requests_total\{code="401",command="expiration"\} [1-9]', text)
    assert re.search(r'keychest_line_requests_total\{code="404",command="other"\} [1-9]', text)


def test_metrics_token(limited_env: LimitedEnv) -> None:
    url = f"{limited_env.server.http_url}/metrics"
    token = limited_env.metrics_token
    anonymous = httpx.get(url)
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-the-token"})
    basic = httpx.get(url, auth=("metrics", token))
    right = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
    for refused in (anonymous, wrong, basic):
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert "keychest_" not in refused.text
    assert right.status_code == 200 and "keychest_line_requests" in right.text
    # The other routes do not want the token.
    assert httpx.get(f"{limited_env.server.http_url}/healthz").text == "ok\n"


def test_empty_metrics_token_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    done = subprocess.run(
        [sys.executable, "-m", "keychest", "serve", "--data-dir", str(tmp_path / "data"),
         "--metrics-token-file", str(empty)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "--metrics-token-file" in done.stderr and "empty" in done.stderr
