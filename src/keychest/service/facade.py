"""The one way in: every front door calls this object; it owns transactions and the clock.

Service functions (``keys.create``, ``domains.add``, ...) take a :class:`Ctx` and do their
work inside the caller's transaction. ``Keychest.call`` runs one in a transaction of its own;
``Keychest.call_batch`` runs many, each in a savepoint, under ONE commit: the line server
uses it for group commit, so that a durable ``ok`` costs one fsync per batch, not per request.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from keychest.config import Settings
from keychest.service import keys
from keychest.service.bulk import BULK_VARIANTS
from keychest.service.context import Ctx
from keychest.service.errors import ServiceError, StorageUnavailable
from keychest.store.db import Database, DatabaseFileGone, SchemaMismatch, migrate, schema_state

T = TypeVar("T")
P = ParamSpec("P")


UNAVAILABLE_TEXT = "storage unavailable; nothing was changed, retry"

# What libpq says while the server is not (yet) there: the start-up waits for these only.
NOT_UP_YET = (
    "connection refused",
    "could not connect",
    "timeout expired",
    "the database system is starting up",
    "the database system is in recovery mode",
    "no route to host",
    "could not translate host name",
    "server closed the connection unexpectedly",
)


@contextmanager
def storage_errors() -> Iterator[None]:
    """The database's own failures as the service's error, so front doors need no SQLAlchemy."""
    try:
        yield
    except DatabaseFileGone as exc:
        raise StorageUnavailable(UNAVAILABLE_TEXT, retry=False) from exc
    except (OperationalError, InterfaceError) as exc:
        # The database went away (a PostgreSQL restart or failover, a locked SQLite file).
        raise StorageUnavailable(UNAVAILABLE_TEXT, retry=True) from exc


def _open_failure(db: Database, exc: BaseException) -> str:
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    path = db.sqlite_path
    if path is not None:
        folder = os.path.dirname(path) or "."
        if not os.access(folder, os.W_OK):
            return (
                f"cannot open the database {path}: the folder {folder} is not writable "
                "(keychest keeps keychest.db and its -wal and -shm files there; see --data-dir)"
            )
        return f"cannot open the database {path}: {reason}"
    return f"cannot open the database {db.engine.url.render_as_string(hide_password=True)}: {reason}"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    ip: str | None = None
    # A read (the line API's `expiration`): served by read_call on a read connection, never
    # queued behind the writer's commits.
    read: bool = False


class Keychest:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        *,
        ip: str | None = None,
        stamps: keys.UseStamps | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        # The client address calls are made for (audit log, per-address quotas): see from_ip.
        self.ip = ip
        # Last-use stamps of keys noted by read_call; every call_batch writes them.
        self.stamps = stamps if stamps is not None else keys.UseStamps()

    def from_ip(self, ip: str | None) -> Keychest:
        """This service, calling on behalf of a client at ``ip`` (each call's ``ctx.ip``)."""
        return Keychest(self.db, self.settings, self.clock, ip=ip, stamps=self.stamps)

    @classmethod
    def open(cls, settings: Settings) -> Keychest:
        """The service of a long-running process: schema created or upgraded, WAL folded by
        :meth:`checkpoint` instead of on the request path.

        Raises StorageUnavailable with one line a person can act on when the database cannot
        be opened or written (a read-only data directory, a PostgreSQL that refuses us).
        """
        db = Database(
            settings.db_url,
            sqlite_autocheckpoint=False,
            pool_size=settings.db_pool_size,
            application_name=f"keychest {settings.role} {socket.gethostname()}",
        )
        try:
            state = schema_state(db)
            # An empty database is a first start; any other upgrade is the operator's decision
            # (`keychest migrate` or `serve --migrate`), taken after a backup (docs/deploy.md).
            if settings.migrate or state.current is None:
                migrate(db)
            elif not state.ready:
                raise SchemaMismatch(state.refusal())
        except SchemaMismatch as exc:
            db.dispose()
            raise StorageUnavailable(str(exc), retry=False) from exc
        except (OperationalError, InterfaceError, OSError) as exc:
            db.dispose()
            # A PostgreSQL server that is not up yet (a machine booting) is worth waiting for;
            # a wrong password, a missing database or an unwritable SQLite folder is not.
            reason = str(getattr(exc, "orig", None) or exc).lower()
            retry = not db.is_sqlite and any(sign in reason for sign in NOT_UP_YET)
            raise StorageUnavailable(_open_failure(db, exc), retry=retry) from exc
        return cls(db, settings)

    @classmethod
    def open_admin(cls, settings: Settings) -> Keychest:
        """The service of an admin command: never migrates, and works only on the schema this
        release knows (StorageUnavailable with the one line to act on otherwise)."""
        db = Database(settings.db_url)
        try:
            state = schema_state(db)
        except (OperationalError, InterfaceError, OSError) as exc:
            db.dispose()
            raise StorageUnavailable(_open_failure(db, exc), retry=False) from exc
        if not state.ready:
            db.dispose()
            raise StorageUnavailable(state.refusal(), retry=False)
        return cls(db, settings)

    @staticmethod
    def migrate_schema(settings: Settings, revision: str = "head") -> tuple[str | None, str | None]:
        """`keychest migrate`: the schema to ``revision`` (up, or down for a rollback)."""
        db = Database(settings.db_url)
        try:
            return migrate(db, revision)
        except SchemaMismatch as exc:
            raise StorageUnavailable(str(exc), retry=False) from exc
        except (OperationalError, InterfaceError, OSError) as exc:
            raise StorageUnavailable(_open_failure(db, exc), retry=False) from exc
        finally:
            db.dispose()

    @property
    def is_sqlite(self) -> bool:
        return self.db.is_sqlite

    def describe_database(self) -> str:
        return self.db.engine.url.render_as_string(hide_password=True)

    def checkpoint(self) -> None:
        """SQLite: copy the WAL back into the database file (see Database.checkpoint)."""
        with storage_errors():
            self.db.checkpoint()

    def close(self) -> None:
        self.db.dispose()

    def _ctx(self, session: Session, now: datetime, ip: str | None) -> Ctx:
        # The database's clock for due times and leases, unless a test set a clock of its own.
        return Ctx(session, self.settings, now, ip, self.clock is utcnow)

    # ParamSpec: mypy checks every call's arguments against the service function's signature.
    def call(self, fn: Callable[Concatenate[Ctx, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` in a write transaction of its own, committed when it returns."""
        with storage_errors(), self.db.write() as session:
            return fn(self._ctx(session, self.clock(), self.ip), *args, **kwargs)

    def read(self, fn: Callable[Concatenate[Ctx, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` in a read-only transaction."""
        with storage_errors(), self.db.read() as session:
            return fn(self._ctx(session, self.clock(), self.ip), *args, **kwargs)

    def read_call(self, call: Call) -> object:
        """Run a read-only call; its value or its ServiceError (as call_batch gives them).

        The keys it uses are stamped in :attr:`stamps`, written by the next call_batch: a
        read costs no commit of its own.
        """
        try:
            with storage_errors(), self.db.read() as session, keys.stamps_deferred_to(self.stamps):
                return call.fn(self._ctx(session, self.clock(), call.ip), *call.args)
        except ServiceError as exc:
            return exc

    def call_batch(self, calls: Sequence[Call]) -> list[object]:
        """Run calls under one commit. A call that raises ServiceError is rolled back alone.

        Calls of a function with a bulk variant (service.bulk) run together through it, in a
        handful of statements whatever their number. Any other exception aborts the whole
        batch (nothing is acknowledged): the caller answers every request with an error,
        and none has been reported ok. A database that cannot take the batch raises
        StorageUnavailable (see its ``retry``).
        """
        # Each call's value or its ServiceError: callers tell them apart with isinstance.
        results: list[object] = [None] * len(calls)
        groups: dict[Callable[..., Any], list[int]] = {}
        for index, call in enumerate(calls):
            groups.setdefault(call.fn, []).append(index)
        stamps = self.stamps.take()
        if not calls and not stamps:
            return results
        try:
            with storage_errors(), self.db.write() as session:
                now = self.clock()
                self._batch(session, now, calls, groups, results)
                keys.write_stamps(self._ctx(session, now, None), stamps)
        except BaseException:
            self.stamps.give_back(stamps)
            raise
        return results

    def _batch(
        self,
        session: Session,
        now: datetime,
        calls: Sequence[Call],
        groups: dict[Callable[..., Any], list[int]],
        results: list[object],
    ) -> None:
        for fn, indexes in groups.items():
            many = BULK_VARIANTS.get(fn)
            if many is not None and len(indexes) > 1:
                items = [(calls[i].ip, calls[i].args) for i in indexes]
                try:
                    with session.begin_nested():
                        outs = many(self._ctx(session, now, None), items)
                except ServiceError as exc:
                    outs = [exc] * len(indexes)
                for index, out in zip(indexes, outs, strict=True):
                    results[index] = out
                continue
            for index in indexes:
                call = calls[index]
                try:
                    with session.begin_nested():
                        results[index] = fn(self._ctx(session, now, call.ip), *call.args)
                except ServiceError as exc:
                    results[index] = exc
