"""Fixtures shared by the whole suite: databases and a live `keychest serve`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import LiveServer, start_server

PG_URL = os.environ.get("KEYCHEST_TEST_DATABASE_URL")

DB_KINDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(params=DB_KINDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: SQLite in tmp_path, or a schema of its own on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keychest.db'}"
        return
    from tests.support.pg import fresh_schema

    with fresh_schema(PG_URL or "", f"kc_{uuid.uuid4().hex[:12]}") as url:
        yield url


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """`keychest serve` on SQLite, loopback only, free ports."""
    server = start_server(tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[object]:
    """Start servers with extra flags or another database; all are stopped afterwards."""
    started: list[LiveServer] = []

    def make(*extra: str, db_url: str | None = None, data_dir: Path | None = None) -> LiveServer:
        server = start_server(data_dir or tmp_path / f"data{len(started)}", *extra, db_url=db_url)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


TESTS_DIR = Path(__file__).parent
# The quick run (-m "not slow", for iterating; CI runs everything) leaves out what starts
# processes of its own for each test: the reliability runs, the CLI and hook modules (each test
# runs keychest or bash against a server of its own) and every test of a per-test live server.
_SLOW_PATHS = ("reliability/", "cli/", "hook/test_hook_logic.py", "notify/test_notify_cli.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        relative = item.path.relative_to(TESTS_DIR).as_posix()
        if relative.startswith(_SLOW_PATHS) or "live_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
