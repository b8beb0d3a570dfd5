"""Migration 0008: every state column takes only its enum's words, on every test database."""

from __future__ import annotations

import importlib.util
from datetime import datetime

import pytest
from sqlalchemy import CheckConstraint, text
from sqlalchemy.exc import IntegrityError

from keychest.store.db import MIGRATIONS_DIR, Database, upgrade
from keychest.store.models import Base

NOW = datetime(2026, 12, 1, 12, 0)


def migration_0008():  # type: ignore[no-untyped-def]
    [path] = (MIGRATIONS_DIR / "versions").glob("0008_*.py")
    spec = importlib.util.spec_from_file_location("migration_0008", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_migration_freezes_the_words_of_the_models() -> None:
    """The models' CHECKs (from keychest.states and judge.State) are what 0008 installed."""
    models = {
        c.name: str(c.sqltext)
        for table in Base.metadata.tables.values()
        for c in table.constraints
        if isinstance(c, CheckConstraint)
    }
    migration = migration_0008()
    frozen = {
        name: migration.condition(column, words, nullable)
        for name, _, column, words, nullable in migration.CHECKS
    }
    assert models == frozen


@pytest.fixture
def db(db_url: str):  # type: ignore[no-untyped-def]
    database = Database(db_url)
    upgrade(database)
    yield database
    database.dispose()


def test_state_columns_refuse_unknown_words(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO accounts (id, email, state, is_placeholder, created_at) "
                "VALUES (1, 'a@b.c', 'active', false, :now)"
            ),
            {"now": NOW},
        )
        conn.execute(
            text("INSERT INTO endpoints (id, host, port, created_at) VALUES (1, 'example.net', 443, :now)"),
            {"now": NOW},
        )
    refused = [
        ("UPDATE accounts SET state = 'activ' WHERE id = 1", {}),
        ("UPDATE endpoints SET last_state = 'fine' WHERE id = 1", {}),
        (
            "INSERT INTO api_keys (key_hash, prefix, state, created_at) VALUES ('h', 'p', 'approved', :now)",
            {"now": NOW},
        ),
        (
            "INSERT INTO outbox (created_at, kind, to_addr, payload, state, attempts) "
            "VALUES (:now, 'alerts', 'a@b.c', '{}', 'done', 0)",
            {"now": NOW},
        ),
        (
            "INSERT INTO scan_changes (endpoint_id, ip, at, change) VALUES (1, '192.0.2.1', :now, 'renewed')",
            {"now": NOW},
        ),
        (
            "INSERT INTO address_states (endpoint_id, ip, state, chain, problems, since, last_scan_at) "
            "VALUES (1, '192.0.2.1', 'good', '[]', '[]', :now, :now)",
            {"now": NOW},
        ),
    ]
    for statement, params in refused:
        with pytest.raises(IntegrityError), db.engine.begin() as conn:
            conn.execute(text(statement), params)
    # The known words, and NULL where the column allows it, pass.
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE accounts SET state = 'blocked' WHERE id = 1"))
        conn.execute(text("UPDATE endpoints SET last_state = 'critical' WHERE id = 1"))
        conn.execute(text("UPDATE endpoints SET last_state = NULL WHERE id = 1"))
        conn.execute(
            text(
                "INSERT INTO scan_changes (endpoint_id, ip, at, change) "
                "VALUES (1, '192.0.2.1', :now, 'recovered')"
            ),
            {"now": NOW},
        )
