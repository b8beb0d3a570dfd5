"""Scale figures: a million domains on SQLite and on PostgreSQL, on this machine.

    .venv/bin/python bench/scale.py [--domains 1000000] [--db sqlite|postgresql|both]
                                    [--pg postgresql://postgres@127.0.0.1:5432/test]
                                    [--overview-domains 10000] [--weekly-accounts 10000]
                                    [--rss-seconds 30] [--markdown out.md]
    .venv/bin/python bench/scale.py --metrics-only [--domains N]
    .venv/bin/python bench/scale.py --scanners-only [--scan-endpoints 2000] [--db postgresql]

Stages, each on the same database, in this order:

1. register: `keychest serve --role api` (abuse limits off) and 16 persistent line API
   connections, each with an API key of its own, pipelining `add` lines 64 at a time (the
   server's per-connection window) until N domains are registered. Every `ok` is counted;
   anything else is reported. This is many requests per connection, not one per connection.
2. lease: `service.scans.lease_due` (the scheduler's own call) on the N-row table, limit 64,
   when everything is due (just registered) and, after moving every endpoint a day ahead,
   when nothing is (the idle poll each scanner makes every second).
3. scan cost: the real ScanScheduler (leases, record(), one DB thread) for a fixed time,
   with a bench-only Scanner whose scan_endpoint returns a canned AddressResult (a real
   certificate's facts and verdict, no network): what the database side costs per scan.
4. overview: bench/dashboard.py's `populate` (the dashboard engineer's builder: one account
   with M scanned domains) inside the N-domain database, then service.overview.overview
   and GET / through the FastAPI app, median of rounds.
5. weekly: W confirmed accounts each watching 3 of those M domains (service calls), then
   `keychest report weekly --now --smtp` as a subprocess against a local aiosmtpd that
   accepts and counts messages.
6. rss: `keychest serve --role all` (line API, HTTP, scanner, mailer) on the database, its
   scanner resolving every name through a loopback DNS server that answers NXDOMAIN (no
   traffic leaves the machine), VmRSS sampled from /proc every second for --rss-seconds.

Writes a Markdown table (stdout, and --markdown FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import sqlalchemy as sa  # noqa: E402
from netutil import free_port, wait_port  # noqa: E402

from keychest.config import Limits, SchedulerSettings, Settings  # noqa: E402
from keychest.scan.judge import State, Verdict, cert_facts  # noqa: E402
from keychest.scan.runner import AddressResult, Scanner, ScanOptions  # noqa: E402
from keychest.scan.targets import Endpoint  # noqa: E402
from keychest.servers.scheduler import ScanScheduler  # noqa: E402
from keychest.service import accounts, domains, keys, scans  # noqa: E402
from keychest.service.facade import Keychest  # noqa: E402
from keychest.store.db import Database, normalise_url, upgrade  # noqa: E402

CONNECTIONS = 16
WINDOW = 64  # the line server pauses reading a connection at 64 answers owed
PER_CONNECTION = 50_000  # reconnect before the server's 100,000 requests per connection cap
LIMITS_OFF = [
    "--keys-per-ip-per-hour", "0", "--apikey-burst", "0", "--domains-per-unconfirmed-key", "0",
    "--claims-per-email-per-day", "0",
]  # fmt: skip


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


@dataclass
class Serve:
    """`keychest serve` as a subprocess, as an operator runs it."""

    db_url: str
    workdir: Path
    role: str
    extra: list[str] = field(default_factory=list)
    line_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Serve:
        log = (self.workdir / f"serve-{self.role}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "keychest", "serve", "--role", self.role, "--db", self.db_url,
                "--data-dir", str(self.workdir), "--line-listen", f"127.0.0.1:{self.line_port}",
                "--http-listen", f"127.0.0.1:{self.http_port}", "--mail-domain", "keychest.test",
                "--log-level", "warning", *LIMITS_OFF, *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )  # fmt: skip
        log.close()
        if self.role in ("all", "api"):
            wait_port(self.line_port)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- 1. registration over the line API -------------------------------------------------------


async def _request(port: int, line: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line)
    answer = b""
    while b"status " not in answer or not answer.endswith(b"\n"):
        chunk = await reader.read(4096)
        if not chunk:
            break
        answer += chunk
    writer.close()
    return answer


async def _pipeline(port: int, lines: list[bytes]) -> tuple[int, list[bytes]]:
    """Send lines over persistent connections, WINDOW at a time; count `status ok` answers."""
    ok = 0
    bad: list[bytes] = []
    for start in range(0, len(lines), PER_CONNECTION):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        part = lines[start : start + PER_CONNECTION]
        for offset in range(0, len(part), WINDOW):
            window = part[offset : offset + WINDOW]
            writer.write(b"".join(window))
            owed = len(window)
            buffer = b""
            while owed:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for answer in complete:
                    if answer.startswith(b"status "):
                        owed -= 1
                        if answer.startswith(b"status ok"):
                            ok += 1
                        elif len(bad) < 5:
                            bad.append(answer)
        writer.close()
    return ok, bad


async def _register(port: int, count: int) -> tuple[int, list[bytes]]:
    answers = [await _request(port, b"command apikey\n") for _ in range(CONNECTIONS)]
    api_keys = [a.split(b"data ", 1)[1].split(b"\n", 1)[0].decode() for a in answers]
    plans = [
        [
            f"command add apikey {api_keys[c]} domain h{i}.s{i % 1000}.scale.test\n".encode()
            for i in range(c, count, CONNECTIONS)
        ]
        for c in range(CONNECTIONS)
    ]
    outs = await asyncio.gather(*(_pipeline(port, plan) for plan in plans))
    return sum(ok for ok, _ in outs), [b for _, bad in outs for b in bad][:5]


def register(db_url: str, workdir: Path, count: int) -> dict[str, object]:
    import uvloop

    with Serve(db_url, workdir, "api") as server:
        started = time.perf_counter()
        ok, bad = uvloop.run(_register(server.line_port, count))
        took = time.perf_counter() - started
        assert server.proc is not None
        rss, hwm = rss_kib(server.proc.pid)
    return {"ok": ok, "bad": bad, "seconds": took, "rate": ok / took, "api_rss_mib": rss / 1024,
            "api_hwm_mib": hwm / 1024}  # fmt: skip


# --- 2. what is due ---------------------------------------------------------------------------


def time_calls(fn, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - started)
    return timings


def lease_figures(service: Keychest) -> dict[str, float]:
    lease = functools.partial(scans.lease_due, owner="bench", limit=64, lease_s=3600)
    leased = time_calls(lambda: service.call(lease), rounds=20)
    # Everything a day ahead: the table a scanner polls every second between scans.
    with service.db.write() as session:
        started = time.perf_counter()
        ahead = service.clock() + dt.timedelta(days=1)
        session.execute(sa.text("UPDATE endpoints SET next_scan_at = :t"), {"t": ahead})
        shift_s = time.perf_counter() - started
    idle = time_calls(lambda: service.call(lease), rounds=20)
    # Due again, for the scan-cost and serve stages.
    with service.db.write() as session:
        session.execute(sa.text("UPDATE endpoints SET next_scan_at = :t"), {"t": service.clock()})
    return {
        "lease_due_ms": statistics.median(leased) * 1000,
        "lease_idle_ms": statistics.median(idle) * 1000,
        "shift_s": shift_s,
    }


# --- 3. cost per scan ------------------------------------------------------------------------


def canned_result(endpoint: Endpoint) -> list[AddressResult]:
    return [AddressResult(endpoint, "192.0.2.10", CANNED_NOW, chain=(CANNED_FACTS,), verdict=CANNED_VERDICT)]


class CannedScanner(Scanner):
    """Bench only: every endpoint answers with the same recorded result, no network at all."""

    async def scan_endpoint(self, endpoint: Endpoint) -> list[AddressResult]:
        return canned_result(endpoint)


class CannedScheduler(ScanScheduler):
    def make_scanner(self) -> Scanner:
        return CannedScanner(self.options)


def _canned_cert() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from dashboard import make_cert

    global CANNED_NOW, CANNED_FACTS, CANNED_VERDICT
    CANNED_NOW = dt.datetime.now(dt.UTC)
    der = make_cert("canned.scale.test", "Let's Encrypt", ec.generate_private_key(ec.SECP256R1()),
                    CANNED_NOW + dt.timedelta(days=60))  # fmt: skip
    CANNED_FACTS = cert_facts(der)
    CANNED_VERDICT = Verdict(State.OK, 60, True, None, True, ())


CANNED_NOW: dt.datetime
CANNED_FACTS: object
CANNED_VERDICT: Verdict


def scan_cost(service: Keychest, seconds: float) -> dict[str, float]:
    _canned_cert()
    scheduler = CannedScheduler(service, SchedulerSettings(max_in_flight=64), ScanOptions(system_trust=False))

    async def run() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(scheduler.run(), seconds)

    asyncio.run(run())
    scanned = scheduler.counts["scanned"]
    # And record() alone, one endpoint per transaction, outside the scheduler.
    due = service.call(functools.partial(scans.lease_due, owner="bench-record", limit=200, lease_s=3600))
    pending = iter(due)
    timings = time_calls(lambda: _record_one(service, next(pending)), rounds=len(due)) if due else [0.0]
    return {
        "scans": scanned,
        "scans_per_s": scanned / seconds,
        "ms_per_scan": seconds / max(scanned, 1) * 1000,
        "record_ms": statistics.median(timings) * 1000,
    }


def _record_one(service: Keychest, item: scans.DueEndpoint) -> None:
    record = functools.partial(scans.record, interval_s=6 * 3600)
    service.call(record, item.id, canned_result(Endpoint(item.host, item.port)))


# --- 4. overview, 5. weekly ---------------------------------------------------------------------


def overview_figures(service: Keychest, count: int, rounds: int) -> dict[str, float]:
    from dashboard import populate, session_cookie
    from fastapi.testclient import TestClient

    from keychest.service import overview
    from keychest.web import session
    from keychest.web.app import create_app

    started = time.perf_counter()
    account_id, _ = populate(service, count)
    build_s = time.perf_counter() - started
    service_call = time_calls(lambda: service.read(overview.overview, account_id), rounds)
    client = TestClient(create_app(service))
    client.cookies.set(session.COOKIE, session_cookie(service, account_id))
    assert client.get("/").status_code == 200
    page = time_calls(lambda: client.get("/").raise_for_status(), rounds)
    return {"build_s": build_s, "service_ms": statistics.median(service_call) * 1000,
            "page_ms": statistics.median(page) * 1000, "page_max_ms": max(page) * 1000}  # fmt: skip


def weekly_accounts(service: Keychest, count: int, overview_domains: int) -> float:
    """``count`` confirmed accounts, each watching 3 of the overview account's scanned domains."""
    rng = random.Random(7)
    started = time.perf_counter()
    for start in range(0, count, 500):

        def make(ctx, start=start):  # type: ignore[no-untyped-def]
            for n in range(start, min(count, start + 500)):
                issued = keys.create(ctx)
                claimed = accounts.claim(ctx, issued.key, f"owner{n}@weekly.example")
                accounts.confirm(ctx, claimed.account_id)
                for i in rng.sample(range(overview_domains), 3):
                    domains.add(ctx, issued.key, f"www{i}.bench{i % 97}.example")

        service.call(make)
    return time.perf_counter() - started


def weekly_figures(service: Keychest, db_url: str, workdir: Path) -> dict[str, object]:
    """Time `keychest report weekly --now --smtp`, then send what it left queued.

    The second part exists because the command's drain stops at the first outbox batch
    whose mails are all skipped (the 10,000 claim confirmations, obsolete once the accounts
    were confirmed), leaving the weekly mails queued: reported to the mail side. It runs the
    same Sender in process until no weekly mail is left queued.
    """
    from aiosmtpd.controller import Controller

    from keychest.servers.mailer import Sender

    class Counter:
        messages = 0

        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]  # noqa: N802
            Counter.messages += 1
            return "250 OK"

    port = free_port()
    controller = Controller(Counter(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "keychest", "report", "weekly", "--now", "--db", db_url,
             "--data-dir", str(workdir), "--smtp", f"127.0.0.1:{port}", "--mail-domain", "keychest.test",
             "--public-url", "http://127.0.0.1:8080"],
            capture_output=True, text=True, cwd=ROOT, timeout=3600,
        )  # fmt: skip
        took = time.perf_counter() - started
        by_command = Counter.messages
        queued = _weekly_queued(service)
        settings = dataclasses.replace(service.settings, mail=_smtp_settings(port))
        sender = Sender(Keychest(service.db, settings), batch=100)
        started = time.perf_counter()

        async def drain() -> None:
            while _weekly_queued(service):
                await sender.run_once()

        asyncio.run(drain())
        drain_s = time.perf_counter() - started
    finally:
        controller.stop()
    tail = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else [done.stderr[-500:]]
    return {"seconds": took, "mails_by_command": by_command, "left_queued": queued, "drain_s": drain_s,
            "mails": Counter.messages, "rc": done.returncode, "tail": " ".join(tail)}  # fmt: skip


def _weekly_queued(service: Keychest) -> int:
    with service.db.read() as session:
        return int(
            session.execute(
                sa.text(
                    "SELECT count(*) FROM outbox WHERE kind = 'weekly' AND state IN ('queued', 'sending')"
                )
            ).scalar_one()
        )


def _smtp_settings(port: int):  # type: ignore[no-untyped-def]
    from keychest.config import MailSettings

    return MailSettings(smtp_host="127.0.0.1", smtp_port=port, mail_from="keychest@keychest.test")


# --- 6. resident memory of serve ---------------------------------------------------------------


def serve_rss(db_url: str, workdir: Path, seconds: float) -> dict[str, float]:
    from tests.scan.tls_servers import DNSServer

    with DNSServer({}) as dns:  # NXDOMAIN for every name: the scanner works, nothing leaves
        extra = ["--resolver", dns.address, "--scan-timeout", "2"]
        with Serve(db_url, workdir, "all", extra) as server:
            assert server.proc is not None
            db = Database(db_url)
            before = _scanned(db)
            samples = []
            for _ in range(int(seconds)):
                time.sleep(1)
                samples.append(rss_kib(server.proc.pid))
            scanned = _scanned(db) - before
            db.dispose()
            alive = server.proc.poll() is None
    return {
        "rss_max_mib": max(r for r, _ in samples) / 1024,
        "rss_last_mib": samples[-1][0] / 1024,
        "hwm_mib": samples[-1][1] / 1024,
        "scanned": scanned,
        "alive": alive,
    }


def _scanned(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(sa.text("SELECT count(*) FROM address_states")).scalar_one())


# --- /metrics at scale (issue 16 item 3) ---------------------------------------------------------


def populate_scanned(db_url: str, count: int) -> None:
    """N scanned endpoints, one address each, straight into the tables (no line API, no scans).

    99 % serve a certificate 80 days from expiry (healthy), 0.5 % one 5 days from expiry,
    0.5 % failed (DNS error): what /metrics must show per address is the 1 %.
    """
    from keychest.store.models import AddressState, Certificate, Endpoint  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    db = Database(db_url)
    with db.write() as session:
        ids = []
        for n, days in enumerate((80, 5)):
            cert = Certificate(
                sha256=f"{n:064x}", subject="CN=x", issuer="CN=ca", issuer_name="ca",
                not_before=now - dt.timedelta(days=10), not_after=now + dt.timedelta(days=days),
                key_type="rsa", key_bits=2048, signature_algorithm="sha256", pem="-", first_seen_at=now,
            )  # fmt: skip
            session.add(cert)
            session.flush()
            ids.append(cert.id)
    chunk = 20_000
    for start in range(0, count, chunk):
        rows = range(start, min(start + chunk, count))
        with db.write() as session:
            session.execute(
                sa.insert(Endpoint),
                [
                    {"id": i + 1, "host": f"h{i}.scale.test", "port": 443, "created_at": now,
                     "next_scan_at": now + dt.timedelta(hours=6), "last_scan_at": now,
                     "last_state": "error" if i % 200 == 1 else "critical" if i % 200 == 0 else "ok"}
                    for i in rows
                ],
            )  # fmt: skip
            session.execute(
                sa.insert(AddressState),
                [
                    {"endpoint_id": i + 1, "ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                     "state": "error" if i % 200 == 1 else "critical" if i % 200 == 0 else "ok",
                     "certificate_id": None if i % 200 == 1 else ids[1] if i % 200 == 0 else ids[0],
                     "chain": [], "problems": [], "error_kind": "dns" if i % 200 == 1 else None,
                     "trusted": None if i % 200 == 1 else True, "hostname_ok": None if i % 200 == 1 else True,
                     "scan_seconds": 0.05, "since": now, "last_scan_at": now}
                    for i in rows
                ],
            )  # fmt: skip
    db.dispose()


def metrics_figures(db_url: str, workdir: Path, per_endpoint: str, rounds: int = 3) -> dict[str, float]:
    """GET /metrics through the FastAPI app in process: body size and time (median, worst)."""
    from fastapi.testclient import TestClient  # noqa: PLC0415

    from keychest.web.app import create_app  # noqa: PLC0415

    settings = Settings(
        db_url=db_url, data_dir=workdir, mail_domain="keychest.test", metrics_per_endpoint=per_endpoint
    )
    db = Database(db_url)
    service = Keychest(db, settings)
    times: list[float] = []
    size = 0
    with TestClient(create_app(service)) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            answer = client.get("/metrics")
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text[:200]
            size = len(answer.content)
    db.dispose()
    return {"bytes": size, "median_s": statistics.median(times), "max_s": max(times)}


def metrics_run(kind: str, args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="keychest-scale-") as tmp,
        database(kind, args.pg, Path(tmp), args.keep) as url,
    ):
        db = Database(url)
        upgrade(db)
        db.dispose()
        started = time.perf_counter()
        populate_scanned(url, args.domains)
        print(
            f"[{kind}] {args.domains:,} scanned endpoints in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        modes = ["problems"] + (["all"] if args.domains <= args.metrics_all_max else [])
        for mode in modes:
            figures = metrics_figures(url, Path(tmp), mode, rounds=1 if mode == "all" else 3)
            mib = figures["bytes"] / 2**20
            print(
                f"| {kind} | {args.domains:,} | --metrics-per-endpoint {mode} | {mib:,.2f} MiB "
                f"| {figures['median_s']:.2f} s (max {figures['max_s']:.2f} s) |",
                flush=True,
            )


# --- scans per second with 1 and 2 scanners (issue 16) ------------------------------------------


def register_loopback(db_url: str, ports: list[int]) -> None:
    """One unlimited key watching 127.0.0.1:PORT for each port, through the service, in batches."""
    from keychest.service.facade import Call  # noqa: PLC0415

    settings = Settings(
        db_url=db_url,
        data_dir=Path("."),
        mail_domain="keychest.test",
        limits=Limits(keys_per_ip_per_hour=0, domains_per_unconfirmed_key=0),
    )
    db = Database(db_url)
    upgrade(db)
    service = Keychest(db, settings)
    key = service.call(keys.create).key
    for start in range(0, len(ports), 1000):
        calls = [Call(domains.add, (key, f"127.0.0.1:{port}")) for port in ports[start : start + 1000]]
        bad = [r for r in service.call_batch(calls) if isinstance(r, Exception)]
        assert not bad, bad[:3]
    db.dispose()


def scanners_figures(
    db_url: str, workdir: Path, ca_file: Path, count: int, scanners: int
) -> dict[str, float]:
    """`keychest serve --role scanner` x ``scanners`` on every endpoint due at once: the rate
    from the first scan recorded until all ``count`` have one."""
    extra = ["--allow-private-targets", "--ca-file", str(ca_file), "--scan-interval", "1h"]
    db = Database(db_url)
    with contextlib.ExitStack() as stack:
        for _ in range(scanners):
            stack.enter_context(Serve(db_url, workdir, "scanner", extra))
        deadline = time.monotonic() + 600
        first: float | None = None
        done = 0
        while time.monotonic() < deadline:
            with db.read() as session:
                done = int(
                    session.execute(
                        sa.text("SELECT count(*) FROM endpoints WHERE last_scan_at IS NOT NULL")
                    ).scalar_one()
                )
            now = time.monotonic()
            if done and first is None:
                first = now
            if done >= count:
                break
            time.sleep(0.2)
        finished = time.monotonic()
    with db.read() as session:
        states = dict(
            session.execute(sa.text("SELECT last_state, count(*) FROM endpoints GROUP BY last_state")).all()
        )
    db.dispose()
    assert first is not None and done >= count, f"{done} of {count} scanned"
    seconds = max(finished - first, 1e-3)
    return {"scanned": done, "seconds": seconds, "rate": done / seconds, "ok": states.get("ok", 0)}


def scanners_run(kind: str, args: argparse.Namespace) -> None:
    from scan import Endpoints  # noqa: PLC0415  (bench/scan.py: N loopback TLS servers)

    with tempfile.TemporaryDirectory(prefix="keychest-scanners-") as tmp:
        endpoints = Endpoints(args.scan_endpoints, max(1, (os.cpu_count() or 2) // 2), Path(tmp))
        try:
            for scanners in (1, 2):
                run_dir = Path(tmp) / f"scanners{scanners}"  # a fresh SQLite file per run
                run_dir.mkdir()
                with database(kind, args.pg, run_dir, args.keep) as url:
                    register_loopback(url, endpoints.ports)
                    figures = scanners_figures(
                        url, run_dir, endpoints.ca_file, len(endpoints.ports), scanners
                    )
                print(
                    f"| {kind} | {len(endpoints.ports):,} | {scanners} | {figures['seconds']:.1f} s "
                    f"| {figures['rate']:,.0f} | {figures['ok']:,} ok |",
                    flush=True,
                )
        finally:
            endpoints.stop()


# --- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str, pg_base: str, workdir: Path, keep: bool) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'scale.db'}"
        return
    schema = f"scale_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(normalise_url(pg_base))
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{pg_base}?options={quote(f'-csearch_path={schema}')}"
    finally:
        if not keep:
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def db_size(db_url: str, workdir: Path) -> float:
    if db_url.startswith("sqlite"):
        return sum(p.stat().st_size for p in workdir.glob("scale.db*")) / 2**20
    db = Database(db_url)
    with db.read() as session:
        size = session.execute(
            sa.text(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            )
        ).scalar_one()
    db.dispose()
    return float(size or 0) / 2**20


def run(kind: str, args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {"db": kind}
    with (
        tempfile.TemporaryDirectory(prefix="keychest-scale-") as tmp,
        database(kind, args.pg, Path(tmp), args.keep) as url,
    ):
        workdir = Path(tmp)
        db = Database(url)
        upgrade(db)
        db.dispose()

        def stage(name: str) -> None:
            print(f"[{kind}] {name} ...", file=sys.stderr, flush=True)

        stage(f"registering {args.domains:,} domains over the line API")
        out["register"] = register(url, workdir, args.domains)
        print(f"[{kind}]   {out['register']}", file=sys.stderr)
        out["db_mib"] = db_size(url, workdir)
        settings = Settings(
            db_url=url,
            data_dir=workdir,
            mail_domain="keychest.test",
            limits=Limits(keys_per_ip_per_hour=0, domains_per_unconfirmed_key=0, claims_per_email_per_day=0),
        )
        db = Database(url)
        service = Keychest(db, settings)
        stage("lease_due")
        out["lease"] = lease_figures(service)
        print(f"[{kind}]   {out['lease']}", file=sys.stderr)
        stage("scan cost")
        out["scan"] = scan_cost(service, args.scan_seconds)
        print(f"[{kind}]   {out['scan']}", file=sys.stderr)
        if args.overview_domains:
            stage(f"overview, {args.overview_domains:,} domains")
            out["overview"] = overview_figures(service, args.overview_domains, args.rounds)
            print(f"[{kind}]   {out['overview']}", file=sys.stderr)
            if args.weekly_accounts:
                stage(f"weekly: building {args.weekly_accounts:,} accounts")
                build = weekly_accounts(service, args.weekly_accounts, args.overview_domains)
                db.dispose()
                stage("weekly: keychest report weekly --now")
                db = Database(url)
                service = Keychest(db, settings)
                out["weekly"] = {"build_s": build, **weekly_figures(service, url, workdir)}
                print(f"[{kind}]   {out['weekly']}", file=sys.stderr)
        db.dispose()
        stage(f"serve RSS for {args.rss_seconds}s")
        out["rss"] = serve_rss(url, workdir, args.rss_seconds)
        print(f"[{kind}]   {out['rss']}", file=sys.stderr)
    return out


def table(results: list[dict[str, object]], args: argparse.Namespace) -> str:
    def cell(result: dict, path: str, fmt: str) -> str:  # type: ignore[type-arg]
        value: object = result
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return "pending"
            value = value[part]
        return fmt.format(value)

    rows = [
        ("domains registered over the line API (`ok` answers)", "register.ok", "{:,}"),
        ("registration time", "register.seconds", "{:.0f} s"),
        ("registration rate", "register.rate", "{:,.0f} adds/s"),
        ("`serve --role api` RSS after registering (peak)", "register.api_hwm_mib", "{:.0f} MiB"),
        ("database size", "db_mib", "{:,.0f} MiB"),
        ("`lease_due` (64 of N due), median", "lease.lease_due_ms", "{:.1f} ms"),
        ("`lease_due` when nothing is due (idle poll), median", "lease.lease_idle_ms", "{:.2f} ms"),
        ("scheduler with canned scans: scans/s (one DB thread)", "scan.scans_per_s", "{:,.0f}"),
        ("  = database cost per scan", "scan.ms_per_scan", "{:.2f} ms"),
        ("`scans.record` alone, one transaction each, median", "scan.record_ms", "{:.2f} ms"),
        (f"overview service call, {args.overview_domains:,}-domain account, median", "overview.service_ms",
         "{:.0f} ms"),
        ("overview page GET / (in-process app), median", "overview.page_ms", "{:.0f} ms"),
        ("overview page GET /, slowest of rounds", "overview.page_max_ms", "{:.0f} ms"),
        (f"`report weekly --now`, {args.weekly_accounts:,} accounts", "weekly.seconds", "{:.0f} s"),
        ("  mails sent by that command (see note)", "weekly.mails_by_command", "{:,}"),
        ("  weekly mails it left queued", "weekly.left_queued", "{:,}"),
        ("  sending those (same Sender, in process, batches of 100)", "weekly.drain_s", "{:.0f} s"),
        ("  mails accepted by the local SMTP server in all", "weekly.mails", "{:,}"),
        ("`serve --role all` RSS while scheduling (max of samples)", "rss.rss_max_mib", "{:.0f} MiB"),
        ("  peak RSS (VmHWM) of that process", "rss.hwm_mib", "{:.0f} MiB"),
        (f"  endpoints scanned (NXDOMAIN) during the {args.rss_seconds:.0f} s", "rss.scanned", "{:,}"),
    ]  # fmt: skip
    lines = [
        "| figure | " + " | ".join(str(r["db"]) for r in results) + " |",
        "| --- | " + " | ".join("---:" for _ in results) + " |",
    ]
    for label, path, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r, path, fmt) for r in results) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--domains", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    default_pg = os.environ.get("KEYCHEST_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--pg", default=default_pg)
    parser.add_argument("--overview-domains", type=int, default=10_000, help="0 skips overview and weekly")
    parser.add_argument("--weekly-accounts", type=int, default=10_000, help="0 skips the weekly run")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--scan-seconds", type=float, default=15)
    parser.add_argument("--rss-seconds", type=float, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL schema afterwards")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--metrics-only",
        action="store_true",
        help="only /metrics size and time on N scanned endpoints written directly (issue 16)",
    )
    parser.add_argument(
        "--metrics-all-max",
        type=int,
        default=200_000,
        help="largest N also scraped with --metrics-per-endpoint all",
    )
    parser.add_argument(
        "--scanners-only",
        action="store_true",
        help="only scans per second with 1 and 2 `--role scanner` processes on loopback TLS servers",
    )
    parser.add_argument("--scan-endpoints", type=int, default=2000, help="TLS servers for --scanners-only")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if args.scanners_only:
        print("| db | endpoints | scanners | all scanned in | scans/s | result |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        for kind in kinds:
            scanners_run(kind, args)
        return 0
    if args.metrics_only:
        print("| db | endpoints | mode | /metrics body | GET /metrics |\n| --- | ---: | --- | ---: | ---: |")
        for kind in kinds:
            metrics_run(kind, args)
        return 0
    results = [run(kind, args) for kind in kinds]
    text = (
        f"{args.domains:,} domains; {os.cpu_count()} cores; load average at the end "
        f"{os.getloadavg()[0]:.1f}\n\n" + table(results, args)
    )
    print(text)
    for result in results:
        for stage in ("register", "weekly"):
            extra = result.get(stage)
            if isinstance(extra, dict) and (extra.get("bad") or extra.get("rc")):
                print(f"{result['db']} {stage}: {extra}", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
