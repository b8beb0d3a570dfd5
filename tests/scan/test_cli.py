"""`keychest scan` as a subprocess, against the same real servers."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from .certs import CertFactory, ServerCert
from .tls_servers import DNSServer, TestServers, free_port


def keychest(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # Through the click group, so this also checks that `scan` is registered there.
    return subprocess.run(
        [sys.executable, "-c", "from keychest.cli import main; main()", "scan", *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSServer]:
    with DNSServer({}) as server:
        yield server


@pytest.fixture(scope="module")
def served(
    servers: TestServers, certs: CertFactory, dns_server: DNSServer
) -> dict[str, tuple[int, ServerCert]]:
    """One server per certificate case, each name resolving to 127.0.0.1 and ::1."""
    cases = {
        "valid": lambda n: certs.valid(n, days=90),
        "expiring": lambda n: certs.valid(n, days=5),
        "expired": certs.expired,
        "wrong-name": lambda n: certs.valid("other.test"),
        "self-signed": certs.self_signed,
        "no-intermediate": certs.missing_intermediate,
        "sha1": certs.sha1_signed,
        "rsa1024": certs.rsa1024,
    }
    running = {}
    for case, make in cases.items():
        name = f"{case}.cli.test"
        cert = make(name)
        running[case] = (servers.tls(cert.chain_pem, cert.key_pem), cert)
        dns_server.records[name] = list(servers.hosts)
    return running


def scan_json(
    servers: TestServers, dns_server: DNSServer, certs: CertFactory, *targets: str
) -> tuple[int, list[dict[str, Any]]]:
    done = keychest(
        "--json",
        "--ca-file",
        str(certs.ca_file),
        "--allow-private-targets",
        "--resolver",
        dns_server.address,
        "--warn-days",
        "30",
        "--crit-days",
        "3",
        "--timeout",
        "5",
        *targets,
    )
    assert done.stderr == ""
    return done.returncode, json.loads(done.stdout)


EXPECTED = {
    # case: (state, trusted, hostname_ok, problem codes, key_type, key_bits, signature_algorithm)
    "valid": ("ok", True, True, [], "EC", 256, "ecdsa-with-SHA256"),
    "expiring": ("warning", True, True, ["expires_soon"], "EC", 256, "ecdsa-with-SHA256"),
    "expired": ("critical", True, True, ["expired"], "EC", 256, "ecdsa-with-SHA256"),
    "wrong-name": ("critical", True, False, ["hostname_mismatch"], "EC", 256, "ecdsa-with-SHA256"),
    "self-signed": ("critical", False, True, ["self_signed"], "EC", 256, "ecdsa-with-SHA256"),
    "no-intermediate": ("critical", False, True, ["untrusted"], "EC", 256, "ecdsa-with-SHA256"),
    "sha1": ("critical", True, True, ["weak_signature"], "EC", 256, "ecdsa-with-SHA1"),
    "rsa1024": ("critical", True, True, ["weak_key"], "RSA", 1024, "ecdsa-with-SHA256"),
}


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_json_fields_for_every_certificate_case(
    servers: TestServers, certs: CertFactory, dns_server: DNSServer, served: dict[str, tuple[int, ServerCert]]
) -> None:
    targets = [f"{case}.cli.test:{port}" for case, (port, _) in served.items()]
    status, results = scan_json(servers, dns_server, certs, *targets)

    assert status == 2
    assert len(results) == len(served) * len(servers.hosts)
    for case, (port, cert) in served.items():
        rows = [r for r in results if r["host"] == f"{case}.cli.test"]
        assert [r["ip"] for r in rows] == list(servers.hosts)
        leaf = cert.leaf
        state, trusted, hostname_ok, codes, key_type, key_bits, signature = EXPECTED[case]
        for row in rows:
            assert row["port"] == port
            assert row["error"] is None and row["error_kind"] is None
            assert row["sha256"] == hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
            assert row["not_before"] == iso(leaf.not_valid_before_utc)
            assert row["not_after"] == iso(leaf.not_valid_after_utc)
            left = (leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)) // dt.timedelta(days=1)
            assert row["days_left"] in (left, left + 1)  # the scan ran a moment earlier
            assert row["state"] == state, row["problems"]
            assert row["trusted"] is trusted
            assert row["hostname_ok"] is hostname_ok
            assert [p["code"] for p in row["problems"]] == codes
            assert row["issuer"] == leaf.issuer.rfc4514_string()
            assert row["subject_alt_names"] == (["other.test"] if case == "wrong-name" else [row["host"]])
            assert (row["key_type"], row["key_bits"], row["signature_algorithm"]) == (
                key_type,
                key_bits,
                signature,
            )
            assert row["self_signed"] is (case == "self-signed")
            assert row["is_lets_encrypt"] is False
            assert row["chain"][0]["sha256"] == row["sha256"]
            assert set(row["chain"][0]) >= {"subject", "issuer", "not_after", "sha256"}


def test_days_left_of_expired_is_negative(
    servers: TestServers, certs: CertFactory, dns_server: DNSServer, served: dict[str, tuple[int, ServerCert]]
) -> None:
    _, results = scan_json(servers, dns_server, certs, f"expired.cli.test:{served['expired'][0]}")
    assert all(r["days_left"] == -11 for r in results)


@pytest.mark.parametrize(
    ("cases", "status"),
    [(["valid"], 0), (["valid", "expiring"], 1), (["expiring", "expired"], 2), (["rsa1024"], 2)],
)
def test_exit_status(
    servers: TestServers,
    certs: CertFactory,
    dns_server: DNSServer,
    served: dict[str, tuple[int, ServerCert]],
    cases: list[str],
    status: int,
) -> None:
    code, _ = scan_json(servers, dns_server, certs, *(f"{c}.cli.test:{served[c][0]}" for c in cases))
    assert code == status


def test_errors_are_rows_and_exit_2(servers: TestServers, certs: CertFactory, dns_server: DNSServer) -> None:
    port = free_port(["127.0.0.1"])
    code, results = scan_json(servers, dns_server, certs, f"127.0.0.1:{port}", "gone.cli.test")
    assert code == 2
    assert [(r["ip"], r["error_kind"], r["state"]) for r in results] == [
        ("127.0.0.1", "refused", "error"),
        (None, "dns", "error"),
    ]
    assert all(r["sha256"] is None and r["chain"] == [] for r in results)


def test_private_targets_are_refused_by_default(served: dict[str, tuple[int, ServerCert]]) -> None:
    done = keychest("--json", f"127.0.0.1:{served['valid'][0]}", f"[::1]:{served['valid'][0]}")
    assert done.returncode == 2
    assert [r["error_kind"] for r in json.loads(done.stdout)] == ["blocked", "blocked"]


def test_table_output_and_targets_file(
    tmp_path: Path, certs: CertFactory, dns_server: DNSServer, served: dict[str, tuple[int, ServerCert]]
) -> None:
    targets = tmp_path / "targets.txt"
    port = served["valid"][0]
    targets.write_text(f"# ssl-cert-check style and ours\nvalid.cli.test {port}\nvalid.cli.test:{port}\n")
    done = keychest(
        "-f", str(targets), "--ca-file", str(certs.ca_file), "--allow-private-targets",
        "--resolver", dns_server.address,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("valid.cli.test") >= 2
    assert "OK" in done.stdout and "Keychest Test CA" in done.stdout


def test_workers_keep_order(
    servers: TestServers, certs: CertFactory, dns_server: DNSServer, served: dict[str, tuple[int, ServerCert]]
) -> None:
    targets = [f"{case}.cli.test:{port}" for case, (port, _) in served.items()]
    _, single = scan_json(servers, dns_server, certs, *targets)
    _, split = scan_json(servers, dns_server, certs, "--workers", "3", *targets)
    assert [(r["host"], r["ip"], r["sha256"]) for r in split] == [
        (r["host"], r["ip"], r["sha256"]) for r in single
    ]


@pytest.mark.parametrize(
    "args",
    [[], ["bad:port"], ["--crit-days", "40", "a.test"], ["--resolver", "dns.example:53", "a.test"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = keychest(*args)
    assert done.returncode == 2
    assert "Error" in done.stderr


def test_international_name_is_scanned_as_its_uts46_a_label(
    servers: TestServers, certs: CertFactory, dns_server: DNSServer
) -> None:
    # UTS 46 keeps ß (xn--strae-oqa); IDNA 2003 turned it into "strasse", another domain.
    cert = certs.valid("xn--strae-oqa.example", days=90)
    port = servers.tls(cert.chain_pem, cert.key_pem)
    dns_server.records["xn--strae-oqa.example"] = list(servers.hosts)
    status, results = scan_json(servers, dns_server, certs, f"straße.example:{port}")
    assert status == 0, results
    assert [(r["host"], r["state"]) for r in results] == [("xn--strae-oqa.example", "ok")] * len(
        servers.hosts
    )


def test_underscore_names_are_scanned_on_request(
    servers: TestServers, certs: CertFactory, dns_server: DNSServer
) -> None:
    # Lenient mode: `command add` refuses under_score.example (not a name a CA issues for),
    # but a one-off scan looks at what it is pointed at.
    cert = certs.valid("score.example", days=90)  # trustme will not issue for under_score
    port = servers.tls(cert.chain_pem, cert.key_pem)
    dns_server.records["under_score.example"] = list(servers.hosts)
    _, results = scan_json(servers, dns_server, certs, f"under_score.example:{port}")
    assert {r["host"] for r in results} == {"under_score.example"}
    assert all(r["error"] is None and r["sha256"] for r in results), results
