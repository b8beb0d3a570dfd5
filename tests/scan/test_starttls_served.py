"""End to end: `keychest serve` watches smtp://127.0.0.1:PORT registered over the line API,
its scheduler negotiates STARTTLS with a real Exim and the REST listing shows it ok."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from keychest.client import LineClient
from tests.support import tls_daemons
from tests.support.server import LiveServer

from .certs import CertFactory


@pytest.mark.slow
def test_serve_scans_a_registered_smtp_endpoint(
    server_factory: Callable[..., LiveServer], certs: CertFactory
) -> None:
    if tls_daemons.missing("exim"):
        pytest.skip("exim4-daemon-light not installed (scripts/test.sh installs it)")
    cert = certs.valid("127.0.0.1")
    with tls_daemons.exim(cert.chain_pem, cert.key_pem) as port:
        server = server_factory("--allow-private-targets", "--ca-file", str(certs.ca_file))
        with LineClient("127.0.0.1", server.line_port) as client:
            key = client.request("apikey").data
            assert key
            added = client.request("add", apikey=key, domain=f"smtp://127.0.0.1:{port}")
        assert added.ok and f"added smtp://127.0.0.1:{port}" in str(added), added
        deadline = time.monotonic() + 30
        servers: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            answer = httpx.get(f"{server.http_url}/api/v1.0/servers", params={"api_key": key}, timeout=10)
            servers = answer.json()["servers"]
            if servers and servers[0]["state"] != "pending":
                break
            time.sleep(0.2)
        assert servers and servers[0]["domain"] == f"smtp://127.0.0.1:{port}"
        # Debian's Exim still accepts TLS 1.1, which old_protocol reports as a warning.
        assert servers[0]["state"] in ("ok", "warning"), (servers, server.log()[-2000:])
