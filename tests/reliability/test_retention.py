"""Bounded storage (issue 16 item 8): retention deletes old audit rows, scan history (keeping
each address's newest rows), expired tokens and sent outbox rows; SQLite's WAL is truncated
after a checkpoint that copied it all."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import sqlalchemy as sa

from keychest.config import Settings
from keychest.service import retention
from keychest.service.facade import Keychest
from keychest.store.db import WAL_TRUNCATE_BYTES, Database, upgrade
from keychest.store.models import Account, AuditEvent, Endpoint, OutboxMail, ScanChange, Token

DAY = dt.timedelta(days=1)


def test_prune_keeps_what_is_recent_and_each_address_newest(db_url: str, tmp_path: Path) -> None:
    db = Database(db_url)
    upgrade(db)
    service = Keychest(db, Settings(db_url, tmp_path, "keychest.test"))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    old, recent = now - 100 * DAY, now - DAY
    with db.write() as session:
        account = Account(email="a@example.org", created_at=old)
        endpoint = Endpoint(host="a.example", port=443, created_at=old)
        session.add_all([account, endpoint])
        session.flush()
        session.add_all(
            [AuditEvent(at=at, event="apikey", ip="192.0.2.1") for at in (old, old, recent)]
            + [
                Token(
                    token_hash=f"{n:064x}",
                    purpose="signin",
                    account_id=account.id,
                    created_at=at,
                    expires_at=at,
                )
                for n, at in enumerate((old, recent))
            ]
            + [
                OutboxMail(created_at=old, kind="k", to_addr="a@example.org", state=state)
                for state in ("sent", "skipped", "queued", "failed")
            ]
            + [OutboxMail(created_at=recent, kind="k", to_addr="a@example.org", state="sent")]
        )
        # One address: an old certificate, old errors, nothing recent; another: old and recent.
        history = [
            ScanChange(
                endpoint_id=endpoint.id, ip="192.0.2.10", at=old - DAY, change="first_seen", certificate_id=7
            ),
            ScanChange(endpoint_id=endpoint.id, ip="192.0.2.10", at=old, change="error"),
            ScanChange(endpoint_id=endpoint.id, ip="192.0.2.10", at=old + DAY, change="error"),
            ScanChange(
                endpoint_id=endpoint.id, ip="192.0.2.11", at=old, change="first_seen", certificate_id=8
            ),
            ScanChange(
                endpoint_id=endpoint.id,
                ip="192.0.2.11",
                at=recent,
                change="new_certificate",
                certificate_id=9,
            ),
        ]
        session.add_all(history)
    total = retention.Pruned(0, 0, 0, 0)
    while (pruned := service.call(retention.prune, keep_s=90 * 86400, batch=2)).total:
        total += pruned
    assert total == retention.Pruned(audit=2, history=2, tokens=1, outbox=2)
    with db.read() as session:
        kept = {
            tuple(row) for row in session.execute(sa.select(ScanChange.ip, ScanChange.change, ScanChange.at))
        }
        states = sorted(session.scalars(sa.select(OutboxMail.state)))
        assert session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == 1
        assert session.scalar(sa.select(sa.func.count()).select_from(Token)) == 1
    # 192.0.2.10 keeps its newest row and its newest with a certificate; 192.0.2.11 its recent one.
    assert kept == {
        ("192.0.2.10", "first_seen", old - DAY),
        ("192.0.2.10", "error", old + DAY),
        ("192.0.2.11", "new_certificate", recent),
    }
    assert states == ["failed", "queued", "sent"]
    db.dispose()


def test_wal_truncated_after_a_full_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keychest.db'}"
    db = Database(url, sqlite_autocheckpoint=False)
    upgrade(db)
    wal = tmp_path / "keychest.db-wal"
    with db.write() as session:
        session.execute(sa.text("CREATE TABLE junk (x BLOB)"))
        for _ in range(12):
            session.execute(sa.text("INSERT INTO junk VALUES (:x)"), {"x": os.urandom(2**20)})
    assert wal.stat().st_size > WAL_TRUNCATE_BYTES
    pages, copied = db.checkpoint()
    assert pages > 0 and copied == pages
    assert wal.stat().st_size == 0
    with db.read() as session:
        assert session.execute(sa.text("SELECT count(*) FROM junk")).scalar() == 12
    db.dispose()
