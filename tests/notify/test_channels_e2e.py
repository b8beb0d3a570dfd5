"""A live `keychest serve --webhook ... --notify json://...` scanning a real TLS server whose
certificate names another host: the scanner's hostname_mismatch reaches both server-wide
channels as a certificate.invalid incident (webhook signature checked by the independent
`standardwebhooks` package, payload by the JSON Schema), for a domain nobody claimed."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from standardwebhooks.webhooks import Webhook

from keychest.client import LineClient
from keychest.notify import signing
from tests.notify.receiver import Receiver, receiver
from tests.scan.certs import CertFactory
from tests.scan.tls_servers import DNSServer, TestServers
from tests.support.server import start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "notify-payload.schema.json").read_text())


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    with receiver() as hook, receiver() as chat:
        yield hook, chat


def test_wrong_host_name_reaches_every_server_wide_channel(
    tmp_path: Path, receivers: tuple[Receiver, Receiver]
) -> None:
    hook, chat = receivers
    certs = CertFactory(tmp_path)
    now = dt.datetime.now(dt.UTC)
    leaf = certs.issued(
        "right.chan.test", not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=80)
    )
    secret = signing.new_secret()
    (tmp_path / "secret").write_text(secret)
    with TestServers() as servers, DNSServer({"wrong.chan.test": ["127.0.0.1"]}) as dns:
        port = servers.tls(leaf.chain_pem, leaf.key_pem, hosts=["127.0.0.1"])
        live = start_server(
            tmp_path / "data",
            "--allow-private-targets",
            "--ca-file", str(certs.ca_file),
            "--resolver", dns.address,
            "--webhook", hook.url + "/keychest",
            "--webhook-secret-file", str(tmp_path / "secret"),
            "--notify", "json://" + chat.url.removeprefix("http://") + "/chat",
        )  # fmt: skip
        try:
            with LineClient("127.0.0.1", live.line_port) as client:
                key = client.request("apikey").data or ""
                assert client.request("add", apikey=key, domain=f"wrong.chan.test:{port}").ok
            [request] = hook.wait_for(1, timeout=60)
            [chat_request] = chat.wait_for(1, timeout=60)
        finally:
            live.stop()
    payload = Webhook(secret).verify(request.body, request.headers)
    jsonschema.validate(payload, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert payload["type"] == "certificate.invalid" and payload["severity"] == "critical"
    assert "hostname_mismatch" in payload["problems"]
    assert payload["endpoint"] == {"host": "wrong.chan.test", "port": port, "ip": "127.0.0.1"}
    assert payload["ack_url"].startswith("http") and "/ack/" in payload["ack_url"]
    assert request.path == "/keychest"
    said = json.loads(chat_request.body)
    assert chat_request.path == "/chat" and "certificate invalid" in said["title"]
