"""old_protocol: one extra handshake offering only TLS 1.0/1.1, after a successful one."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from keychest.scan.model import AddressResult, ScanOptions
from keychest.scan.runner import Scanner
from keychest.scan.targets import Endpoint
from tests.support.net import free_port, wait_for_port

from .certs import CertFactory
from .tls_servers import TestServers


@pytest.fixture(scope="module")
def tls10_port(certs: CertFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("tls10")
    cert = certs.valid("127.0.0.1")
    (folder / "cert.pem").write_bytes(cert.chain_pem)
    (folder / "key.pem").write_bytes(cert.key_pem)
    port = free_port()
    # The system OpenSSL still speaks TLS 1.0 at security level 0.
    command = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(Path(folder / "cert.pem"))]
    command += ["-key", str(folder / "key.pem"), "-tls1", "-cipher", "ALL:@SECLEVEL=0", "-quiet"]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _scan(port: int, certs: CertFactory, old: bool = True) -> AddressResult:
    options = ScanOptions(
        timeout=5, ca_file=str(certs.ca_file), allow_private_targets=True, old_protocols=old
    )
    [result] = asyncio.run(Scanner(options).scan([Endpoint("127.0.0.1", port)]))
    return result


def _codes(result: AddressResult) -> set[str]:
    assert result.verdict is not None, result.error
    return {p.code for p in result.verdict.problems}


def test_tls10_server_gets_old_protocol(tls10_port: int, certs: CertFactory) -> None:
    result = _scan(tls10_port, certs)
    assert _codes(result) == {"old_protocol"}
    assert result.state == "warning"
    assert "TLSv1" in result.verdict.problems[0].message  # type: ignore[union-attr]


def test_off_means_no_extra_handshake(tls10_port: int, certs: CertFactory) -> None:
    assert _codes(_scan(tls10_port, certs, old=False)) == set()


def test_modern_server_is_not_flagged(servers: TestServers, certs: CertFactory) -> None:
    cert = certs.valid("127.0.0.1")
    port = servers.tls(cert.chain_pem, cert.key_pem, hosts=["127.0.0.1"])
    assert _codes(_scan(port, certs)) == set()


def test_no_extra_handshake_after_a_failure(servers: TestServers, certs: CertFactory) -> None:
    port = servers.hostile("garbage", ["127.0.0.1"])
    before = servers.connections[port]["total"]
    assert _scan(port, certs).error is not None
    assert servers.connections[port]["total"] - before == 1


def test_cli_flag_turns_it_off(tls10_port: int, certs: CertFactory) -> None:
    import json

    from .test_cli import keychest

    common = ["--json", "--allow-private-targets", "--ca-file", str(certs.ca_file), f"127.0.0.1:{tls10_port}"]
    [row] = json.loads(keychest(*common).stdout)
    assert [p["code"] for p in row["problems"]] == ["old_protocol"]
    [row] = json.loads(keychest("--no-old-protocols", *common).stdout)
    assert row["problems"] == []
