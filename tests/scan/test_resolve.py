"""`keychest scan --resolve HOST:PORT:ADDRESS`: the address given, the name for SNI and checks."""

from __future__ import annotations

import json

from .certs import CertFactory
from .test_cli import keychest
from .tls_servers import TestServers


def test_resolve_pins_the_address_and_keeps_the_name(servers: TestServers, certs: CertFactory) -> None:
    cert = certs.valid("backend.invalid")
    port = servers.tls(cert.chain_pem, cert.key_pem, hosts=["127.0.0.1"])
    common = ["--json", "--ca-file", str(certs.ca_file), "--no-old-protocols"]
    done = keychest(*common, "--allow-private-targets", "--resolve", f"BACKEND.invalid:{port}:127.0.0.1",
                    f"backend.invalid:{port}")  # fmt: skip
    [row] = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout
    assert row["ip"] == "127.0.0.1" and row["hostname_ok"] is True and row["state"] == "ok"
    # Another port is not pinned: .invalid never resolves.
    done = keychest(*common, "--allow-private-targets", "--resolve", f"backend.invalid:{port}:127.0.0.1",
                    f"backend.invalid:{port + 1 if port < 65535 else port - 1}")  # fmt: skip
    assert json.loads(done.stdout)[0]["error_kind"] in ("dns", "no_address")
    # The private-address guard still judges the pinned address.
    done = keychest(*common, "--resolve", f"backend.invalid:{port}:127.0.0.1", f"backend.invalid:{port}")
    assert json.loads(done.stdout)[0]["error_kind"] == "blocked"


def test_bad_resolve_is_a_usage_error() -> None:
    done = keychest("--resolve", "backend.invalid:443:not-an-address", "backend.invalid")
    assert done.returncode == 2 and "--resolve" in done.stderr and "not an IP address" in done.stderr
