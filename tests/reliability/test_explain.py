"""Every query on a hot path is answered through an index, on SQLite and on PostgreSQL.

The hot statements come from the services themselves (scans.due_query, keys.keys_by_hash,
keys.keys_made_since, domains.endpoints_by_host, domains.existing_watches,
domains.watch_counts), so a change there is checked here; the few built inline (updates by
primary key, record()'s read) are rebuilt the way the services build them.

SQLite: EXPLAIN QUERY PLAN must show SEARCH ... USING (COVERING) INDEX / INTEGER PRIMARY KEY,
never a SCAN of the table. PostgreSQL: with a few thousand rows and `enable_seqscan = off` (so
the planner's choice says whether an index CAN serve the query, not whether the table is
small), EXPLAIN must show an Index (Only) Scan or Bitmap Index Scan on that table, never a Seq
Scan.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Select, select, update
from sqlalchemy.sql.dml import Update

from keychest.service import domains, keys, scans
from keychest.store.db import Database, upgrade
from keychest.store.models import AddressState, ApiKey, Endpoint, Watch

NOW = datetime(2026, 1, 1, 12, 0, 0)
ROWS = 3000


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database)
    with database.engine.begin() as conn:
        conn.execute(
            sa.insert(ApiKey.__table__),
            [
                {"key_hash": f"{i:064x}", "prefix": f"{i:08x}", "state": "unclaimed", "created_at": NOW,
                 "created_ip": f"10.0.{i // 250}.{i % 250}"}
                for i in range(ROWS)
            ],
        )  # fmt: skip
        conn.execute(
            sa.insert(Endpoint.__table__),
            [
                {"host": f"h{i}.explain.test", "port": 443, "created_at": NOW,
                 "next_scan_at": NOW + timedelta(seconds=i)}
                for i in range(ROWS)
            ],
        )  # fmt: skip
        conn.execute(
            sa.insert(Watch.__table__),
            [{"api_key_id": i + 1, "endpoint_id": i + 1, "added_at": NOW} for i in range(ROWS)],
        )
        conn.exec_driver_sql("ANALYZE")
    yield database
    database.dispose()


def plan(db: Database, statement: Select | Update) -> str:  # type: ignore[type-arg]
    sql = str(
        statement.compile(
            dialect=db.engine.dialect, compile_kwargs={"literal_binds": True, "render_postcompile": True}
        )
    )
    with db.engine.connect() as conn:
        if db.is_sqlite:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
            return "\n".join(str(row[-1]) for row in rows)
        conn.exec_driver_sql("SET enable_seqscan = off")
        rows = conn.exec_driver_sql("EXPLAIN " + sql).all()
        conn.rollback()
        return "\n".join(str(row[0]) for row in rows)


def assert_indexed(db: Database, statement: Select | Update, *tables: str) -> None:  # type: ignore[type-arg]
    text = plan(db, statement)
    print(f"--- {db.engine.dialect.name}\n{text}")
    for table in tables:
        if db.is_sqlite:
            lines = [line for line in text.splitlines() if f" {table}" in line]
            assert lines, f"{table} not in plan:\n{text}"
            for line in lines:
                assert line.startswith("SEARCH") and ("INDEX" in line or "PRIMARY KEY" in line), text
        else:
            assert f"Seq Scan on {table}" not in text, text
            assert any(
                kind in line and f" on {table}" in line
                for line in text.splitlines()
                for kind in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan")
            ), f"{table}:\n{text}"


def test_scheduler_lease_query_uses_the_due_index(db: Database) -> None:
    # service/scans.py lease_due: what is due, oldest first, locked rows skipped.
    statement = scans.due_query(NOW + timedelta(seconds=100), 64)
    assert_indexed(db, statement, "endpoints")
    if db.is_sqlite:
        assert "TEMP B-TREE" not in plan(db, statement), "the ORDER BY must come from the index"
    else:
        assert "ix_endpoints_next_scan_at" in plan(db, statement)


def test_scheduler_lease_update_and_record_by_key(db: Database) -> None:
    # lease_due's UPDATE (by id), record()'s read of the latest states, release_leases.
    assert_indexed(
        db,
        update(Endpoint).where(Endpoint.id.in_([1, 2, 3])).values(lease_owner="x", next_scan_at=NOW),
        "endpoints",
    )
    assert_indexed(db, select(AddressState).where(AddressState.endpoint_id == 5), "address_states")
    assert_indexed(
        db,
        update(Endpoint)
        .where(Endpoint.id.in_([1, 2]), Endpoint.lease_owner == "x")
        .values(lease_owner=None, next_scan_at=NOW),
        "endpoints",
    )


def test_line_api_key_lookup_uses_the_hash_index(db: Database) -> None:
    # service/keys.py use_many: keys by hash, a batch at a time.
    statement = keys.keys_by_hash([f"{i:064x}" for i in (3, 30, 300)])
    assert_indexed(db, statement, "api_keys")
    # keys.create_many: the hourly quota per address.
    quota = keys.keys_made_since(["10.0.0.1", "10.0.1.1"], NOW)
    assert_indexed(db, quota, "api_keys")


def test_line_api_add_queries_use_indexes(db: Database) -> None:
    # domains._select_endpoints: existing endpoints by host (the unique host, port index).
    hosts = domains.endpoints_by_host(["h1.explain.test", "h2.explain.test"])
    assert_indexed(db, hosts, "endpoints")
    # domains.add_many: the watches that already exist for these endpoints and keys.
    watched = domains.existing_watches([1, 2, 3], [1, 2], [7])
    assert_indexed(db, watched, "watches", "api_keys")
    # domains.add_many: domains per unconfirmed key (the quota).
    per_key = domains.watch_counts([1, 2])
    assert_indexed(db, per_key, "watches")
