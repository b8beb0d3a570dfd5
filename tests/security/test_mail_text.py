"""Issue 10 item 7: text from a certificate cannot add lines to a mail.

A certificate whose issuer organisation carries CR LF and a forged "Dashboard:" line, served
on loopback and scanned by a live `keychest serve`; its expiry alert, caught by aiosmtpd,
shows the control characters escaped and has no forged line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keychest.client import LineClient
from tests.notify.smtp import SmtpSink
from tests.scan.certs import CertFactory
from tests.scan.tls_servers import DNSServer, TestServers
from tests.support.server import LiveServer, start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

HOST = "evil.mailtext.test"
FORGED = "Dashboard: https://evil.example/"
ISSUER = f"Evil CA\r\n{FORGED}\x1b[2J"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, SmtpSink, str]]:
    certs = CertFactory(Path(tmp_path_factory.mktemp("mailtext-certs")))
    # Valid from a day ago for 9.6 more hours: past a third of its lifetime, an expiry alert.
    cert = certs.custom(HOST, days=0.4, issuer_organization=ISSUER)
    tls = TestServers()
    port = tls.tls(cert.chain_pem, cert.key_pem, hosts=["127.0.0.1"])
    dns = DNSServer({HOST: ["127.0.0.1"]})
    try:
        with SmtpSink() as sink:
            server = start_server(
                Path(tmp_path_factory.mktemp("mailtext")),
                "--allow-private-targets",
                "--resolver", dns.address,
                "--scan-interval", "3s",
                "--scan-timeout", "2",
                "--smtp", sink.address,
            )  # fmt: skip
            try:
                yield server, sink, f"{HOST}:{port}"
            finally:
                server.stop()
    finally:
        tls.close()
        dns.close()


def test_certificate_text_is_escaped_in_alert_mails(live: tuple[LiveServer, SmtpSink, str]) -> None:
    server, sink, domain = live
    email = "owner@mailtext.example.org"
    with LineClient("127.0.0.1", server.line_port) as client:
        key = client.request("apikey").data or ""
        assert client.request("add", apikey=key, domain=domain).ok
        assert client.request("claim", apikey=key, email=email).ok
    confirm = sink.links(sink.wait_to(email, subject="Confirm"), "/confirm/")[0]
    path = httpx.URL(confirm).raw_path.decode()
    assert httpx.post(server.http_url + path, follow_redirects=False).status_code == 303
    deadline = time.monotonic() + 60
    alert = None
    while alert is None:
        assert time.monotonic() < deadline, [str(m["Subject"]) for m in sink.to(email)]
        found = [m for m in sink.to(email) if "expire" in str(m["Subject"]) or "alert" in str(m["Subject"])]
        alert = found[0] if found else None
        time.sleep(0.2)
    text = SmtpSink.text(alert)
    assert "Evil CA\\r\\nDashboard: https://evil.example/\\x1b[2J" in text, text
    assert not any(line.lstrip().startswith(FORGED) for line in text.splitlines()), text
    assert "\x1b" not in text and "\x1b" not in SmtpSink.html(alert)
