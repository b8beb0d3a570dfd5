"""The schema comes from migrations only, and they match the models on every database."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from keychest.store.db import Database, upgrade
from keychest.store.models import Base


def test_migrations_build_exactly_the_models(db_url: str) -> None:
    db = Database(db_url)
    try:
        upgrade(db)
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        upgrade(db)  # a second start finds nothing to do
        with db.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
        assert {"accounts", "api_keys", "endpoints", "watches", "audit_log", "outbox"} <= tables
    finally:
        db.dispose()


def test_downgrade_to_nothing_and_back(db_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from keychest.store.db import MIGRATIONS_DIR

    db = Database(db_url)
    try:
        upgrade(db)
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        with db.engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        upgrade(db)
        with db.engine.connect() as conn:
            assert "watches" in inspect(conn).get_table_names()
    finally:
        db.dispose()
