"""Engine set-up for SQLite (the embedded default) and PostgreSQL, and the migration runner."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key for schema upgrades: any constant no other code uses ("kcmg").
MIGRATION_LOCK = 0x6B636D67

# A WAL larger than this is truncated after a checkpoint that copied all of it.
WAL_TRUNCATE_BYTES = 4 * 2**20

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


def make_engine(
    url: str, *, pool_size: int = 5, sqlite_autocheckpoint: bool = True, application_name: str | None = None
) -> Engine:
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
            # pg_stat_activity tells the nodes apart: "keychest scanner web-2" (63 bytes at most).
            **({"application_name": application_name[:63]} if application_name else {}),
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

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        sqlite_autocheckpoint: bool = True,
        application_name: str | None = None,
    ) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(
            self.url,
            pool_size=pool_size,
            sqlite_autocheckpoint=sqlite_autocheckpoint,
            application_name=application_name,
        )
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
            if not busy and wal_pages > 0 and copied == wal_pages and self._wal_bytes() > WAL_TRUNCATE_BYTES:
                # Everything is in the database file: start the WAL over at size 0. A WAL, once
                # grown (a burst of writes, a long reader), otherwise keeps its size for good.
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return wal_pages, copied

    def _wal_bytes(self) -> int:
        if self.sqlite_path is None:
            return 0
        try:
            return os.stat(self.sqlite_path + "-wal").st_size
        except FileNotFoundError:
            return 0

    def dispose(self) -> None:
        self.engine.dispose()


def _alembic_config() -> Any:  # alembic.config.Config, imported late: the CLI's cold start
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


class SchemaMismatch(Exception):
    """The database's schema is not the one this release works with; the text is one line."""


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # None: an empty database (no keychest schema yet)
    head: str  # the newest revision this release knows
    known: bool  # current is one of this release's revisions (False: a newer keychest migrated it)

    @property
    def ready(self) -> bool:
        return self.current == self.head

    def refusal(self) -> str:
        """Why a process of this release must not work on this database, in one line."""
        if self.current is None:
            return "the database has no keychest schema yet: run `keychest migrate` (or `keychest serve`)"
        if not self.known:
            return (
                f"database is at {self.current}, this keychest knows up to {self.head}: "
                "upgrade keychest or roll back"
            )
        return (
            f"database is at {self.current}, this keychest needs {self.head}: back up the database, "
            "then run `keychest migrate` (or start `keychest serve --migrate`)"
        )


def revisions() -> list[str]:
    """This release's revisions, oldest first (the chain is linear)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]


def schema_state(db: Database) -> SchemaState:
    """Where the database's schema is, read without changing anything."""
    chain = revisions()
    with db.engine.connect() as conn:
        current = _current(conn)
    return SchemaState(current=current, head=chain[-1], known=current is None or current in chain)


def _current(conn: Connection) -> str | None:
    # Read directly: Alembic's MigrationContext narrates itself at INFO, and a refused start
    # must be one line.
    if not inspect(conn).has_table("alembic_version"):
        return None
    value = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return None if value is None else str(value)


def upgrade(db: Database, revision: str = "head") -> None:
    """Create or upgrade the schema with Alembic (`keychest migrate`, `serve --migrate`)."""
    from alembic import command

    cfg = _alembic_config()
    with db.engine.begin() as conn:
        _lock(db, conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def migrate(db: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to ``revision``, up or down (a rollback); returns (before, after).

    Refuses a database a newer keychest migrated: this release has no scripts to go down from
    there; the newer release's `keychest migrate --to` does.
    """
    from alembic import command

    chain = revisions()
    target = chain[-1] if revision == "head" else revision
    if target != "base" and target not in chain:
        known = ", ".join(chain)
        raise SchemaMismatch(f"unknown revision {revision}: this keychest knows {known} (and base)")
    cfg = _alembic_config()
    with db.engine.begin() as conn:
        _lock(db, conn)
        before = _current(conn)
        if before is not None and before not in chain:
            raise SchemaMismatch(SchemaState(before, chain[-1], known=False).refusal())
        cfg.attributes["connection"] = conn
        position = -1 if before is None else chain.index(before)
        wanted = -1 if target == "base" else chain.index(target)
        if wanted < position:
            command.downgrade(cfg, target)
        elif wanted > position:
            command.upgrade(cfg, target)
        after = _current(conn)
    return before, after


def _lock(db: Database, conn: Connection) -> None:
    if not db.is_sqlite:
        # Several processes (scanners, API nodes) often start at once on a fresh database:
        # without this they race to CREATE TABLE and all but one die on "already exists".
        # Held until this transaction ends; the others then find the schema up to date.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
