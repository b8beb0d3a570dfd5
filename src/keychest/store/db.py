"""Engine set-up for SQLite (the embedded default) and PostgreSQL, and the migration runner."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key for schema upgrades: any constant no other code uses ("kcmg").
MIGRATION_LOCK = 0x6B636D67

log = logging.getLogger("keychest.store")


class DatabaseFileGone(Exception):
    """The SQLite file this process opened is no longer the one at its path.

    Commits would go into an unlinked file (or a fresh empty one) that a restart never sees,
    so no write may be acknowledged. The service layer turns this into a 503.
    """


def normalise_url(url: str) -> str:
    """Accept the URLs people type; pick the drivers we ship."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def sqlite_url_for(data_dir: Path) -> str:
    return f"sqlite:///{data_dir.resolve() / 'keychest.db'}"


def make_engine(url: str, *, pool_size: int = 5, sqlite_autocheckpoint: bool = True) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _configure_sqlite(engine, sqlite_autocheckpoint)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=10,
        # A connection that died with a PostgreSQL restart is noticed at checkout and replaced,
        # so after a restart only the transactions running at that moment fail (and say so).
        pool_pre_ping=True,
        # Connections a load balancer or NAT silently dropped are not kept for hours.
        pool_recycle=1800,
        # A checkout waits at most this long for a free connection before failing the request
        # with a clear error, rather than queueing behind a stuck database for 30 s.
        pool_timeout=10,
        connect_args={
            # Fail over quickly while the server is down instead of hanging in connect().
            "connect_timeout": 5,
            # Notice a peer that vanished (machine gone, cable pulled) within about a minute.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        },
    )


def _configure_sqlite(engine: Engine, autocheckpoint: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: object) -> None:  # pysqlite's connection: untyped
        # Take transaction control from pysqlite so that BEGIN and SAVEPOINT mean what
        # SQLAlchemy says (the documented pysqlite recipe).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged commit survives power loss, not only a process crash.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if not autocheckpoint:
            # The committing writer would otherwise copy the WAL back into the database every
            # 1000 pages, on the request path; Database.checkpoint() does it in the background.
            cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front: a deferred transaction that later tries to write
        # fails at once with "database is locked" when another process wrote meanwhile.
        if conn.get_execution_options().get("keychest_write", False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class Database:
    """The engine plus two session factories: one for writes, one for reads."""

    def __init__(self, url: str, *, pool_size: int = 5, sqlite_autocheckpoint: bool = True) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url, pool_size=pool_size, sqlite_autocheckpoint=sqlite_autocheckpoint)
        self.is_sqlite = self.url.startswith("sqlite")
        database = self.engine.url.database if self.is_sqlite else None
        # None for PostgreSQL and in-memory SQLite: no file that could be deleted under us.
        self.sqlite_path = database if database and database != ":memory:" else None
        self._file_id: tuple[int, int] | None = None
        self._file_gone_logged = False
        if self.sqlite_path is not None:
            event.listen(self.engine, "connect", self._remember_file)
        writer = self.engine.execution_options(keychest_write=True)
        self._write_sessions = sessionmaker(bind=writer, expire_on_commit=False)
        self._read_sessions = sessionmaker(bind=self.engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits when the block ends without an exception.

        On SQLite, raises DatabaseFileGone before the work and again after the commit when the
        file at the database's path is not the one this process opened: a caller answers
        ``ok`` only when the commit reached the file a restart will open.
        """
        self.check_file()
        with self._write_sessions() as session, session.begin():
            yield session
        self.check_file()

    def _remember_file(self, _dbapi_conn: Any, _record: Any) -> None:
        # The first connection (the migrations at start) fixes which file is ours; a later
        # connection to a missing path would quietly create a new, empty one.
        if self._file_id is None and self.sqlite_path is not None:
            st = os.stat(self.sqlite_path)
            self._file_id = (st.st_dev, st.st_ino)

    def check_file(self) -> None:
        """Raise DatabaseFileGone when the SQLite file was deleted or replaced since it was opened."""
        if self._file_id is None or self.sqlite_path is None:
            return
        try:
            st = os.stat(self.sqlite_path)
            same = (st.st_dev, st.st_ino) == self._file_id
        except FileNotFoundError:
            same = False
        if same:
            self._file_gone_logged = False
            return
        text = f"database file {self.sqlite_path} was deleted or replaced while running; restore and restart"
        if not self._file_gone_logged:
            self._file_gone_logged = True
            log.error("%s (writes are refused until then)", text)
        raise DatabaseFileGone(text)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read_sessions() as session, session.begin():
            yield session

    def checkpoint(self) -> tuple[int, int]:
        """Copy SQLite's WAL back into the database without blocking writers (PASSIVE).

        Returns (pages in the WAL, pages copied). A long-running process that switched
        auto-checkpoints off calls this from a background task.
        """
        with self.engine.connect() as conn:
            busy, wal_pages, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        return wal_pages, copied

    def dispose(self) -> None:
        self.engine.dispose()


def upgrade(db: Database, revision: str = "head") -> None:
    """Create or upgrade the schema with Alembic (also run by `keychest serve` at start)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as conn:
        if not db.is_sqlite:
            # Several processes (scanners, API nodes) often start at once on a fresh database:
            # without this they race to CREATE TABLE and all but one die on "already exists".
            # Held until this transaction ends; the others then find the schema up to date.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
