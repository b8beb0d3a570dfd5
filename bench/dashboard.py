"""Benchmark the dashboard's overview (and servers page) for an account with many domains.

    .venv/bin/python bench/dashboard.py [--domains 1000,10000] [--rounds 20] [--db URL]
                                        [--screenshot-db PATH]

Builds a database with one confirmed account watching N domains, each scanned (through
``service.scans.record``, the scanner's own storage path) with certificates from several
issuers expiring over the next 13 months, some expired, some stale deployments across two
addresses, some endpoints down. Then times GET / (the overview: tiles, calendar, incidents)
and GET /servers through the real FastAPI app in process (routing, session cookie, SQL,
template rendering; no network), and prints a Markdown table of median and p95 per size.

The target: the overview under 1 s at 1,000 domains, and still usable at 10,000.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.responses import Response
from fastapi.testclient import TestClient

from keychest.config import Limits, Settings
from keychest.scan.errors import ErrorKind, ScanError
from keychest.scan.judge import Problem, Severity, State, Verdict, cert_facts
from keychest.scan.runner import AddressResult
from keychest.scan.targets import Endpoint
from keychest.service import accounts, domains, keys, scans
from keychest.service.facade import Keychest
from keychest.store.db import Database, upgrade
from keychest.web import session
from keychest.web.app import create_app

ISSUERS = (
    "Let's Encrypt",
    "DigiCert Inc",
    "Sectigo Limited",
    "Google Trust Services",
    "ZeroSSL",
    "Corp Internal CA",
)
UTC = dt.UTC


def _issuer_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {name: ec.generate_private_key(ec.SECP256R1()) for name in ISSUERS}


def make_cert(host: str, issuer: str, key: ec.EllipticCurvePrivateKey, not_after: dt.datetime) -> bytes:
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, issuer),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{issuer} CA"),
                ]
            )
        )
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=90))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def populate(service: Keychest, count: int, *, seed: int = 6) -> tuple[int, str]:
    """One confirmed account watching ``count`` scanned domains. Returns (account id, key)."""
    rng = random.Random(seed)
    issuer_keys = _issuer_keys()

    def account(ctx):  # type: ignore[no-untyped-def]
        issued = keys.create(ctx)
        claimed = accounts.claim(ctx, issued.key, "bench@example.org")
        accounts.confirm(ctx, claimed.account_id)
        return claimed.account_id, issued.key

    account_id, key = service.call(account)
    now = service.clock().replace(tzinfo=UTC)
    batch = 250
    for start in range(0, count, batch):
        hosts = [f"www{i}.bench{i % 97}.example" for i in range(start, min(count, start + batch))]
        plans = []
        for host in hosts:
            roll = rng.random()
            issuer = rng.choices(ISSUERS, weights=(50, 15, 12, 10, 8, 5))[0]
            not_after = now + dt.timedelta(days=rng.uniform(-20, 390))
            plans.append((host, roll, issuer, not_after))
        certs = {
            host: make_cert(host, issuer, issuer_keys[issuer], not_after)
            for host, _, issuer, not_after in plans
        }

        def store(ctx, plans=plans, certs=certs):  # type: ignore[no-untyped-def]
            for host, roll, _, not_after in plans:
                outcome = domains.add(ctx, key, host)
                endpoint = Endpoint(host, 443)
                facts = cert_facts(certs[host])
                left = int((not_after - now).total_seconds() // 86400)
                state = State.OK if left > 30 else State.WARNING if left > 7 else State.CRITICAL
                verdict = Verdict(state, left, True, None, True, ())
                results = [
                    AddressResult(endpoint, "192.0.2.10", now, chain=(facts,), verdict=verdict, elapsed=0.05)
                ]
                if roll < 0.05:  # down: every address fails
                    results = [
                        AddressResult(
                            endpoint,
                            "192.0.2.10",
                            now,
                            error=ScanError(ErrorKind.TIMEOUT, "handshake timed out"),
                        )
                    ]
                elif roll < 0.10:  # a stale deployment on a second address
                    stale = Verdict(
                        State.WARNING,
                        left,
                        True,
                        None,
                        True,
                        (Problem("stale_deployment", Severity.WARNING, "serves an older certificate"),),
                    )
                    results.append(
                        AddressResult(
                            endpoint, "2001:db8::10", now, chain=(facts,), verdict=stale, elapsed=0.06
                        )
                    )
                scans.record(ctx, outcome.endpoint_id, results, interval_s=6 * 3600)

        service.call(store)
    return account_id, key


def session_cookie(service: Keychest, account_id: int) -> str:
    response = Response()
    session.sign_in(service, response, account_id)
    header = response.headers["set-cookie"]
    return header.split(";", 1)[0].split("=", 1)[1]


def time_get(client: TestClient, path: str, rounds: int) -> list[float]:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(path)
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return timings


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def time_in_chromium(app: object, cookie: str, rounds: int) -> list[float]:
    """Load the overview in headless Chromium over real HTTP; seconds to the `load` event.

    Uses Debian's /usr/bin/chromium through Playwright (no browser download), uvicorn on a
    free loopback port in a thread of this process.
    """
    import socket
    import threading

    import uvicorn
    from playwright.sync_api import sync_playwright

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    timings: list[float] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"],
            )  # fmt: skip
            context = browser.new_context()
            context.add_cookies(
                [{"name": session.COOKIE, "value": cookie, "url": f"http://127.0.0.1:{port}"}]
            )
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")  # warm-up
            assert page.locator("[data-tile=expiring_7]").count() == 1
            for _ in range(rounds):
                started = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
                timings.append(time.perf_counter() - started)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    return timings


def run(
    count: int, rounds: int, db_url: str | None, workdir: Path, chromium: bool = False
) -> dict[str, float]:
    url = db_url or f"sqlite:///{workdir / f'bench-{count}.db'}"
    db = Database(url)
    upgrade(db)
    settings = Settings(
        db_url=url,
        data_dir=workdir,
        mail_domain="keychest.test",
        limits=Limits(keys_per_ip_per_hour=0, domains_per_unconfirmed_key=0, claims_per_email_per_day=0),
    )
    service = Keychest(db, settings)
    started = time.perf_counter()
    account_id, _ = populate(service, count)
    build_s = time.perf_counter() - started
    client = TestClient(create_app(service))
    client.cookies.set(session.COOKIE, session_cookie(service, account_id))
    body = client.get("/").text
    assert "Renewal calendar" in body and 'data-tile="expiring_7"' in body, body[:500]
    client.get("/servers")  # warm caches (templates compiled, statements cached)
    overview = time_get(client, "/", rounds)
    servers_page = time_get(client, "/servers", rounds)
    in_browser = (
        time_in_chromium(create_app(service), session_cookie(service, account_id), rounds)
        if chromium
        else [0.0]
    )
    db.dispose()
    return {
        "chromium_median_ms": statistics.median(in_browser) * 1000,
        "chromium_p95_ms": p95(in_browser) * 1000,
        "domains": count,
        "build_s": build_s,
        "overview_median_ms": statistics.median(overview) * 1000,
        "overview_p95_ms": p95(overview) * 1000,
        "servers_median_ms": statistics.median(servers_page) * 1000,
        "servers_p95_ms": p95(servers_page) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--domains", default="1000,10000", help="comma-separated account sizes")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite per size)")
    parser.add_argument(
        "--chromium", action="store_true", help="also time the overview in headless Chromium over HTTP"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="keychest-bench-") as tmp:
        for count in (int(n) for n in args.domains.split(",")):
            print(f"building and timing {count} domains ...", file=sys.stderr)
            rows.append(run(count, args.rounds, args.db, Path(tmp), args.chromium))
    print(
        "| domains | overview median | overview p95 | servers page median | servers page p95 "
        "| overview in Chromium, median | p95 | build |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        browser = (
            f"{row['chromium_median_ms']:.0f} ms | {row['chromium_p95_ms']:.0f} ms"
            if args.chromium
            else "- | -"
        )
        print(
            f"| {row['domains']:,} | {row['overview_median_ms']:.0f} ms | {row['overview_p95_ms']:.0f} ms "
            f"| {row['servers_median_ms']:.0f} ms | {row['servers_p95_ms']:.0f} ms | {browser} "
            f"| {row['build_s']:.0f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
