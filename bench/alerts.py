"""Benchmark the mail alert pass (``service.alerting.run_pass``) with mail incidents on.

    .venv/bin/python bench/alerts.py [--accounts 2000] [--endpoints 5] [--rounds 5] [--db URL]

Builds a database with A confirmed accounts, each watching E endpoints whose one address the
scanner found serving a certificate for another name (state critical, problem
``hostname_mismatch``: an ``invalid`` incident). Accounts are made through the service calls
keys.create, domains.add, accounts.claim and accounts.confirm, run directly on a context in
batches of 100 accounts per transaction (fewer commits; the calls are the same; about 20-45 s
for 2,000 accounts); the certificate and AddressState rows are inserted directly, as
tests/notify/test_mail_ack.py does. The service's clock stands still until moved.

Then times ``service.call(alerting.run_pass)`` (median of --rounds):

a. first pass: every incident new, every account gets one mail (alerts_sent and the queued
   alert mails are deleted before each round, so each round starts over);
b. quiet pass at the same time, nothing due: the cost paid every minute in the steady state,
   with --renotify off (notify.renotify_s = 0: the baseline, no ``due_again`` query) and on
   (the default 24 h), rounds interleaved;
c. repeat pass: clock moved 25 h on (round r at r * 25 h): every incident mailed again;
d. quiet pass right after each repeat, off and on.

The ratio (b, on) / (b, off) is the steady-state cost of renotify. Speeds are ratios within
one run; nothing here is asserted beyond what each pass must mail.

SQLite in a temporary folder unless --db names a PostgreSQL server: the bench then works in a
schema of its own (created, dropped at the end), so the database need not be empty.

Runs (2026-12-01, a shared, loaded machine; about 2.5 min each):

    .venv/bin/python bench/alerts.py
    .venv/bin/python bench/alerts.py --db postgresql://postgres@127.0.0.1:5432/test --rounds 3

    median s (accounts/s)           SQLite, 5 rounds     PostgreSQL, 3 rounds
    a. first pass                   3.50   (571)         6.34  (316)
    b. quiet, renotify off          1.17  (1714)         1.69 (1184)
    b. quiet, renotify 24 h         1.64  (1220) 1.41x   2.49  (802) 1.48x
    c. repeat (+25 h)              13.01   (154)        16.14  (124)
    d. quiet after, off / 24 h      1.12 / 1.59          2.52 / 3.38 (noisy)

Those figures were before two fixes, found with this bench (commit "Alert pass: due repeats
read in one query"): ``alerting.due_again`` was one SELECT per account (2,000 more round trips
each pass), now one for all; and the repeat's ORM ``update(AlertSent)`` walked the session's
whole identity map per statement (quadratic in the pass's size), now with
``synchronize_session=False`` (the pass loads no AlertSent objects). After them, SQLite, 5
rounds, same machine with a CI run beside it (noisy): first 5.38 s, quiet off 2.34 s, quiet on
2.30 s (0.98x), repeat 8.54 s, quiet after 1.62 / 1.56 s.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from keychest.config import Limits, NotifySettings, Settings  # noqa: E402
from keychest.service import accounts, alerting, domains, keys  # noqa: E402
from keychest.service.context import Ctx  # noqa: E402
from keychest.service.facade import Keychest  # noqa: E402
from keychest.store.db import Database, normalise_url, upgrade  # noqa: E402
from keychest.store.models import AddressState, AlertSent, Certificate, OutboxMail  # noqa: E402

T0 = datetime(2026, 12, 1, 12, 0)
HOUR = timedelta(hours=1)
BATCH = 100


class Clock:
    """Time stands still until the bench moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@contextmanager
def own_schema(base_url: str) -> Iterator[str]:
    """A PostgreSQL schema of the bench's own, dropped afterwards (as tests/support/pg.py)."""
    schema = f"bench_alerts_{secrets.token_hex(4)}"
    engine = sa.create_engine(normalise_url(base_url))
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def populate(svc: Keychest, count: int, per_account: int) -> None:
    """``count`` confirmed accounts, each watching ``per_account`` endpoints with a critical
    hostname mismatch."""

    def batch(ctx: Ctx, first: int, last: int) -> None:
        now = ctx.now
        for n in range(first, last):
            key = keys.create(ctx).key
            endpoint_ids = [
                domains.add(ctx, key, f"www{e}.site{n}.bench.example").endpoint_id for e in range(per_account)
            ]
            outcome = accounts.claim(ctx, key, f"ops{n}@bench.example")
            accounts.confirm(ctx, outcome.account_id, outcome.api_key_id)
            certs = [
                Certificate(
                    sha256=f"{endpoint_id:064x}",
                    subject="CN=other.example",
                    issuer="O=Test CA",
                    issuer_name="Test CA",
                    not_before=now - timedelta(days=10),
                    not_after=now + timedelta(days=80),
                    subject_alt_names=["other.example"],
                    key_type="EC",
                    key_bits=256,
                    signature_algorithm="ecdsa-with-SHA256",
                    pem="",
                    first_seen_at=now,
                )
                for endpoint_id in endpoint_ids
            ]
            ctx.session.add_all(certs)
            ctx.session.flush()
            ctx.session.add_all(
                AddressState(
                    endpoint_id=endpoint_id,
                    ip="192.0.2.1",
                    state="critical",
                    certificate_id=cert.id,
                    chain=[],
                    problems=[{"code": "hostname_mismatch", "severity": "critical", "message": "name"}],
                    since=now,
                    last_scan_at=now,
                )
                for endpoint_id, cert in zip(endpoint_ids, certs, strict=True)
            )

    for first in range(0, count, BATCH):
        svc.call(batch, first, min(count, first + BATCH))


def forget_alerts(ctx: Ctx) -> None:
    """Back to before the first pass: nothing mailed, nothing queued."""
    ctx.session.execute(sa.delete(AlertSent))
    ctx.session.execute(sa.delete(OutboxMail).where(OutboxMail.kind == "alerts"))


def timed(svc: Keychest, expect_mails: int) -> float:
    started = time.perf_counter()
    result = svc.call(alerting.run_pass)
    elapsed = time.perf_counter() - started
    if result.mails != expect_mails:
        raise SystemExit(f"pass mailed {result.mails} accounts, expected {expect_mails}")
    return elapsed


def line(label: str, times: list[float], accounts_n: int, base: float | None = None) -> float:
    median = statistics.median(times)
    ratio = f"  {median / base:5.2f}x baseline" if base else ""
    spread = f"{min(times):.3f}-{max(times):.3f}"
    print(
        f"{label:<40} {median:8.3f} s (range {spread:>13} s, n={len(times)})"
        f"  {accounts_n / median:9.0f} accounts/s{ratio}"
    )
    return median


def run(url: str, args: argparse.Namespace) -> None:
    db = Database(url)
    upgrade(db)
    clock = Clock(T0)
    settings = Settings(
        db_url=url,
        data_dir=Path("."),
        mail_domain="bench.test",
        limits=Limits(
            keys_per_ip_per_hour=0,
            domains_per_unconfirmed_key=0,
            claims_per_email_per_day=0,
            claims_per_ip_per_hour=0,
            apikey_burst_per_ip=0,
        ),
    )
    on = Keychest(db, replace(settings, notify=NotifySettings(renotify_s=86400.0)), clock)
    off = Keychest(db, replace(settings, notify=NotifySettings(renotify_s=0)), clock)
    n = args.accounts
    try:
        started = time.perf_counter()
        populate(on, n, args.endpoints)
        built = time.perf_counter() - started
        print(
            f"{'sqlite' if db.is_sqlite else 'postgresql'}: {n} accounts x {args.endpoints} endpoints "
            f"(one critical hostname_mismatch each) built in {built:.1f} s; {args.rounds} rounds"
        )

        first = []
        for _ in range(args.rounds):
            on.call(forget_alerts)
            first.append(timed(on, n))
        # Warm-up for the quiet passes (caches, planner statistics), not counted.
        timed(off, 0)
        timed(on, 0)
        quiet_off: list[float] = []
        quiet_on: list[float] = []
        for _ in range(args.rounds):
            quiet_off.append(timed(off, 0))
            quiet_on.append(timed(on, 0))
        repeat: list[float] = []
        after_off: list[float] = []
        after_on: list[float] = []
        for r in range(1, args.rounds + 1):
            clock.now = T0 + r * 25 * HOUR
            repeat.append(timed(on, n))
            after_off.append(timed(off, 0))
            after_on.append(timed(on, 0))

        line("a. first pass (all incidents new)", first, n)
        base = line("b. quiet pass, renotify off (baseline)", quiet_off, n)
        b_on = line("b. quiet pass, renotify 24 h", quiet_on, n, base)
        line("c. repeat pass (+25 h, all due again)", repeat, n, base)
        line("d. quiet after repeat, renotify off", after_off, n, base)
        line("d. quiet after repeat, renotify 24 h", after_on, n, base)
        print(f"steady-state cost of renotify: (b on) / (b off) = {b_on / base:.2f}")
    finally:
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", default=None, help="a PostgreSQL URL (default: SQLite in a temp folder)")
    args = parser.parse_args()
    if args.db is None:
        with tempfile.TemporaryDirectory() as tmp:
            run(f"sqlite:///{tmp}/alerts.sqlite3", args)
    else:
        with own_schema(args.db) as url:
            run(url, args)


if __name__ == "__main__":
    main()
