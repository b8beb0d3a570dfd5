"""Revocation and ARI against real local responders: a CRL over HTTP, `openssl ocsp`, an ARI
server of our own (RFC 9773), hostile ones, and a whole scan through `keychest scan`."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from keychest.scan import ari
from keychest.scan.checks import AriChecker, RevocationChecker
from keychest.scan.fetch import Fetcher
from keychest.scan.judge import utc_now
from keychest.scan.resolve import Resolver
from keychest.scan.revocation import Method, Revocation, Status

from .pki import NOW, MiniCA, der, key_pem, pem
from .responders import Request, Responder
from .tls_servers import TestServers

T = TypeVar("T")
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


_runner = asyncio.Runner()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """One event loop for the whole module: the checkers (like a scanner) live on one loop."""
    return _runner.run(coroutine)


class Clock:
    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def fetcher(timeout: float = 5.0, allow_private: bool = True, **kwargs: object) -> Fetcher:
    return Fetcher(Resolver(timeout), timeout=timeout, allow_private_targets=allow_private, **kwargs)  # type: ignore[arg-type]


class CrlServer:
    """The CA's CRL URL: serves the current CRL with an ETag, answers 304 to a matching If-None-Match."""

    def __init__(self) -> None:
        self.crl = b""

    def __call__(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        etag = '"' + hashlib.sha256(self.crl).hexdigest()[:16] + '"'
        if request.headers.get("if-none-match") == etag:
            return 304, {"ETag": etag}, b""
        return 200, {"ETag": etag, "Content-Type": "application/pkix-crl"}, self.crl


def test_one_crl_shared_by_1000_certificates_is_downloaded_once_per_next_update() -> None:
    ca = MiniCA()
    server = CrlServer()
    with Responder({"/ca.crl": server}) as responder:
        url = responder.url("/ca.crl")
        leaves = [ca.leaf(f"host{i}.example", crl_url=url)[0] for i in range(1000)]
        revoked = leaves[7]
        server.crl = ca.crl({revoked.serial_number: x509.ReasonFlags.superseded}, next_update=NOW + DAY)
        clock = Clock()
        checker = RevocationChecker(fetcher(), clock)
        issuer = der(ca.cert)

        async def round_at(moment: dt.datetime) -> list[Revocation]:
            clock.now = moment
            return list(await asyncio.gather(*(checker.check(der(leaf), issuer, None) for leaf in leaves)))

        # Four scan rounds inside the CRL's validity: one download, shared by all 1,000.
        for hours in (0, 6, 12, 18):
            verdicts = run(round_at(NOW + hours * HOUR))
            assert [v.status for v in verdicts].count(Status.REVOKED) == 1
            assert verdicts[7].reason == "superseded" and verdicts[7].method is Method.CRL
            assert all(v.status is Status.GOOD for i, v in enumerate(verdicts) if i != 7)
        assert (checker.crl_downloads, responder.hits("/ca.crl")) == (1, 1)

        # The CA publishes the next CRL; once the old one is due, a conditional GET fetches it.
        server.crl = ca.crl({}, this_update=NOW + 20 * HOUR, next_update=NOW + 2 * DAY)
        verdicts = run(round_at(NOW + 25 * HOUR))
        assert {v.status for v in verdicts} == {Status.GOOD}
        assert responder.log[-1].headers.get("if-none-match")
        run(round_at(NOW + 30 * HOUR))
        assert (checker.crl_downloads, responder.hits("/ca.crl")) == (2, 2)

        # Past nextUpdate and the CA still serves the same CRL (304): unknown, never good.
        verdicts = run(round_at(NOW + 2 * DAY + HOUR))
        assert {v.status for v in verdicts} == {Status.UNKNOWN}
        assert verdicts[0].error and "out of date" in verdicts[0].error
        assert (checker.crl_downloads, responder.hits("/ca.crl")) == (2, 3)


def test_revocation_fetches_obey_the_private_address_guard() -> None:
    ca = MiniCA()
    server = CrlServer()
    with Responder({"/ca.crl": server}) as responder:
        leaf, _ = ca.leaf(crl_url=responder.url("/ca.crl"))
        server.crl = ca.crl({leaf.serial_number: None})
        checker = RevocationChecker(fetcher(allow_private=False), Clock())
        verdict = run(checker.check(der(leaf), der(ca.cert), None))
        assert verdict.status is Status.UNKNOWN
        assert verdict.error and "refusing to scan 127.0.0.1" in verdict.error
        assert responder.log == []


@pytest.mark.parametrize(
    "hostile", ["huge", "slow", "garbage", "other issuer", "wrong signature", "http 500"]
)
def test_hostile_crl_servers_give_unknown_with_an_error(hostile: str) -> None:
    ca = MiniCA()
    impostor = MiniCA(common_name=ca.common_name)
    stranger = MiniCA(common_name="another CA")
    holder: dict[str, x509.Certificate] = {}

    def route(request: Request) -> tuple[int, dict[str, str], bytes] | str:
        serial = holder["leaf"].serial_number
        if hostile == "huge":
            return 200, {}, b"\x30" * (2 * 1024 * 1024)
        if hostile == "slow":
            return "hang"
        if hostile == "garbage":
            return 200, {}, b"<html>not a CRL</html>"
        if hostile == "other issuer":
            return 200, {}, stranger.crl({serial: None})
        if hostile == "wrong signature":
            return 200, {}, impostor.crl({serial: None})
        return 500, {}, b"oops"

    with Responder({"/ca.crl": route}) as responder:
        holder["leaf"], _ = ca.leaf(crl_url=responder.url("/ca.crl"))
        checker = RevocationChecker(fetcher(timeout=0.5, max_bytes=1024 * 1024), Clock())
        started = time.monotonic()
        verdict = run(checker.check(der(holder["leaf"]), der(ca.cert), None))
        assert time.monotonic() - started < 2.5
        assert verdict.status is Status.UNKNOWN and verdict.method is Method.CRL
        assert verdict.error
        # The failure is remembered for a while: the next certificate costs no second time-out.
        again = run(checker.check(der(holder["leaf"]), der(ca.cert), None))
        assert again.status is Status.UNKNOWN
        assert responder.hits("/ca.crl") == 1


class OpensslOcsp:
    """`openssl ocsp` answering the requests our HTTP front receives (`openssl ocsp -port`
    would listen on every interface; the tests bind only 127.0.0.1)."""

    def __init__(self, directory: Path, ca: MiniCA) -> None:
        self.directory = directory
        (directory / "ca.pem").write_bytes(pem(ca.cert))
        (directory / "ca.key").write_bytes(key_pem(ca.key))
        (directory / "index.txt").write_text("")

    def index(self, entries: list[tuple[x509.Certificate, str]]) -> None:
        """The CA's database: V valid, R revoked (yesterday, keyCompromise)."""
        lines = []
        for cert, state in entries:
            expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
            revoked = (NOW - DAY).strftime("%y%m%d%H%M%SZ") + ",keyCompromise" if state == "R" else ""
            subject = "/" + "/".join(a.rfc4514_string() for a in cert.subject)
            lines.append(f"{state}\t{expiry}\t{revoked}\t{cert.serial_number:X}\tunknown\t{subject}\n")
        (self.directory / "index.txt").write_text("".join(lines))

    def __call__(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        (self.directory / "req.der").write_bytes(request.body)
        subprocess.run(
            [
                "openssl",
                "ocsp",
                "-index",
                "index.txt",
                "-CA",
                "ca.pem",
                "-rsigner",
                "ca.pem",
                "-rkey",
                "ca.key",
                "-reqin",
                "req.der",
                "-respout",
                "resp.der",
                "-nmin",
                "60",
            ],  # fmt: skip
            cwd=self.directory,
            check=True,
            capture_output=True,
        )
        return 200, {"Content-Type": "application/ocsp-response"}, (self.directory / "resp.der").read_bytes()


def test_openssl_ocsp_responder(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    ca = MiniCA()
    responder_ca = OpensslOcsp(tmp_path, ca)
    with Responder({"/": responder_ca}) as responder:
        url = responder.url("/")
        good, _ = ca.leaf("good.example", ocsp_url=url)
        bad, _ = ca.leaf("bad.example", ocsp_url=url)
        stranger, _ = ca.leaf("stranger.example", ocsp_url=url)
        responder_ca.index([(good, "V"), (bad, "R")])
        checker = RevocationChecker(fetcher(), utc_now)
        issuer = der(ca.cert)
        assert run(checker.check(der(good), issuer, None)) == Revocation(Status.GOOD, Method.OCSP)
        revoked = run(checker.check(der(bad), issuer, None))
        assert revoked.status is Status.REVOKED and revoked.method is Method.OCSP
        assert revoked.reason == "keyCompromise"
        unknown = run(checker.check(der(stranger), issuer, None))
        assert unknown.status is Status.UNKNOWN and unknown.error
        # The answer is kept until its nextUpdate: asking again costs no request.
        before = len(responder.log)
        run(checker.check(der(good), issuer, None))
        assert len(responder.log) == before
        # A response about the right certificate from another CA's responder is not believed.
        other = MiniCA(common_name="another CA")
        assert run(checker.check(der(good), der(other.cert), None)).status is Status.UNKNOWN


# --- ARI -----------------------------------------------------------------------------------


class AriServer:
    """An ACME directory and its renewalInfo resource, as RFC 9773 section 4 describes them."""

    def __init__(self, retry_after: int = 21600) -> None:
        self.retry_after = retry_after
        self.windows: dict[str, tuple[dt.datetime, dt.datetime, str | None]] = {}
        self.base = ""

    def directory(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        body = {"newNonce": f"{self.base}/nonce", "renewalInfo": f"{self.base}/renewal-info"}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def renewal_info(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        ident = request.path.rsplit("/", 1)[1]
        if ident not in self.windows:
            return 404, {}, b'{"type": "urn:ietf:params:acme:error:malformed"}'
        start, end, explanation = self.windows[ident]
        body: dict[str, object] = {
            "suggestedWindow": {
                "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        }
        if explanation:
            body["explanationURL"] = explanation
        return (
            200,
            {"Content-Type": "application/json", "Retry-After": str(self.retry_after)},
            json.dumps(body).encode(),
        )


@pytest.fixture
def ari_server() -> Iterator[tuple[AriServer, Responder, trustme.CA]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = AriServer()
    routes: dict[str, Callable[[Request], object]] = {
        "/directory": server.directory,
        "*": server.renewal_info,
    }
    with Responder(routes, tls=context) as responder:  # type: ignore[arg-type]
        server.base = f"https://127.0.0.1:{responder.port}"
        yield server, responder, ca


def test_ari_a_simulated_day_costs_one_request_per_retry_after(
    ari_server: tuple[AriServer, Responder, trustme.CA], tmp_path: Path
) -> None:
    server, responder, tls_ca = ari_server
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    acme = MiniCA(organization="Private ACME CA")
    leaves = [acme.leaf(f"h{i}.example")[0] for i in range(3)]
    for leaf in leaves:
        server.windows[ari.cert_id(leaf) or ""] = (NOW + 20 * DAY, NOW + 22 * DAY, None)
    clock = Clock()
    checker = AriChecker(fetcher(ca_file=str(ca_file)), clock, [f"{server.base}/directory"])

    async def day_of_scans() -> None:
        for minute in range(0, 24 * 60, 10):  # a scan every 10 minutes
            clock.now = NOW + dt.timedelta(minutes=minute)
            infos = await asyncio.gather(*(checker.check(der(leaf), "Private ACME CA") for leaf in leaves))
            assert all(i is not None and i.window_start == NOW + 20 * DAY for i in infos)

    run(day_of_scans())
    # Retry-After is 6 hours: 4 requests per certificate per day, whatever the scan rate.
    for leaf in leaves:
        assert responder.hits(f"/renewal-info/{ari.cert_id(leaf)}") == 4
    assert responder.hits("/directory") == 1
    assert checker.requests == 12


def test_ari_window_moved_into_the_past_is_seen_after_retry_after(
    ari_server: tuple[AriServer, Responder, trustme.CA], tmp_path: Path
) -> None:
    server, responder, tls_ca = ari_server
    server.retry_after = 3600
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    leaf = MiniCA(organization="Private ACME CA").leaf()[0]
    ident = ari.cert_id(leaf) or ""
    server.windows[ident] = (NOW + 20 * DAY, NOW + 22 * DAY, None)
    clock = Clock()
    checker = AriChecker(fetcher(ca_file=str(ca_file)), clock, [f"{server.base}/directory"])
    first = run(checker.check(der(leaf), "Private ACME CA"))
    assert first is not None and ari.ari_problems(first, clock.now) == []
    # The CA announces a revocation by moving the window into the past.
    server.windows[ident] = (NOW - 2 * DAY, NOW - DAY, "https://ca.example/incident/1")
    clock.now = NOW + 30 * dt.timedelta(minutes=1)
    assert run(checker.check(der(leaf), "Private ACME CA")) == first  # within Retry-After
    clock.now = NOW + HOUR + dt.timedelta(seconds=1)
    moved = run(checker.check(der(leaf), "Private ACME CA"))
    assert moved is not None
    (problem,) = ari.ari_problems(moved, clock.now)
    assert problem.code == "ari_window_passed" and "https://ca.example/incident/1" in problem.message


def test_ari_unknown_issuer_and_unknown_certificate(
    ari_server: tuple[AriServer, Responder, trustme.CA], tmp_path: Path
) -> None:
    server, responder, tls_ca = ari_server
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    leaf = MiniCA(organization="Private ACME CA").leaf()[0]
    no_directories = AriChecker(fetcher(ca_file=str(ca_file)), Clock())
    assert run(no_directories.check(der(leaf), "Private ACME CA")) is None
    assert responder.log == []
    checker = AriChecker(fetcher(ca_file=str(ca_file)), Clock(), [f"{server.base}/directory"])
    assert run(checker.check(der(leaf), "Private ACME CA")) is None  # the CA answers 404


# --- a whole scan --------------------------------------------------------------------------


def keychest_scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from keychest.cli import main; main()", "scan", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keychest_scan_reports_a_revoked_certificate_and_no_revocation_skips_it(tmp_path: Path) -> None:
    ca = MiniCA()
    server = CrlServer()
    with Responder({"/ca.crl": server}) as responder, TestServers() as servers:
        leaf, key = _ip_leaf(ca, responder.url("/ca.crl"))
        now = dt.datetime.now(dt.UTC)
        reason = x509.ReasonFlags.key_compromise
        server.crl = ca.crl({leaf.serial_number: reason}, this_update=now - HOUR, next_update=now + DAY)
        port = servers.tls(pem(leaf) + pem(ca.cert), key_pem(key), hosts=["127.0.0.1"])
        (tmp_path / "ca.pem").write_bytes(pem(ca.cert))
        common = [
            "--json",
            "--allow-private-targets",
            "--ca-file",
            str(tmp_path / "ca.pem"),
            f"127.0.0.1:{port}",
        ]
        done = keychest_scan(*common)
        assert done.returncode == 2, done.stderr
        (result,) = json.loads(done.stdout)
        assert result["revocation"]["status"] == "revoked"
        assert result["revocation"]["method"] == "crl"
        assert result["revocation"]["reason"] == "keyCompromise"
        assert "revoked" in [p["code"] for p in result["problems"]]
        assert result["ari"] is None
        hits = responder.hits("/ca.crl")
        skipped = keychest_scan("--no-revocation", *common)
        (result,) = json.loads(skipped.stdout)
        assert result["revocation"] is None and skipped.returncode == 0, skipped.stdout
        assert responder.hits("/ca.crl") == hits


def _ip_leaf(ca: MiniCA, crl_url: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf for 127.0.0.1, valid now (the scan judges it against the real clock)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + 60 * DAY)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .add_extension(x509.CRLDistributionPoints([point]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


@pytest.mark.parametrize("hostile", ["garbage", "backwards window", "http 500", "slow", "huge"])
def test_hostile_ari_servers_give_no_window(
    ari_server: tuple[AriServer, Responder, trustme.CA], tmp_path: Path, hostile: str
) -> None:
    server, responder, tls_ca = ari_server
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    leaf = MiniCA(organization="Private ACME CA").leaf()[0]
    ident = ari.cert_id(leaf) or ""

    def answer(request: Request) -> tuple[int, dict[str, str], bytes] | str:
        if hostile == "garbage":
            return 200, {}, b"\x00\xffnot json"
        if hostile == "backwards window":
            window = {"start": "2026-12-03T00:00:00Z", "end": "2026-12-02T00:00:00Z"}
            return 200, {}, json.dumps({"suggestedWindow": window}).encode()
        if hostile == "slow":
            return "hang"
        if hostile == "huge":
            return 200, {}, b" " * (2 * 1024 * 1024)
        return 500, {}, b"oops"

    responder.routes[f"/renewal-info/{ident}"] = answer
    clock = Clock()
    checker = AriChecker(
        fetcher(timeout=0.5, ca_file=str(ca_file), max_bytes=1024 * 1024), clock, [f"{server.base}/directory"]
    )
    started = time.monotonic()
    assert run(checker.check(der(leaf), "Private ACME CA")) is None
    assert time.monotonic() - started < 2.5
    # Not asked again at every scan: a failure waits ERROR_RETRY at least.
    clock.now = NOW + dt.timedelta(minutes=10)
    assert run(checker.check(der(leaf), "Private ACME CA")) is None
    assert responder.hits(f"/renewal-info/{ident}") == 1
