"""Upgrades as an operator runs them (issue 16 item 5): `keychest migrate`, a serve that only
migrates when told to, admin commands that never migrate, and a rollback with --to."""

from __future__ import annotations

import subprocess
from pathlib import Path

import sqlalchemy as sa

from keychest.store.db import normalise_url, revisions
from tests.support.net import free_port
from tests.support.server import KEYCHEST

HEAD = revisions()[-1]
PREVIOUS = revisions()[-2]


def keychest(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KEYCHEST, *args], capture_output=True, text=True, timeout=timeout)


def version_of(url: str) -> str | None:
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def set_version(url: str, revision: str) -> None:
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def serve(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """A serve that must refuse to start: it exits on its own."""
    return keychest(
        "serve", "--db", url, "--data-dir", str(tmp_path / "d"),
        "--line-listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{free_port()}",
        "--role", "scanner", *extra,
        timeout=60,
    )  # fmt: skip


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_admin_commands_never_migrate(db_url: str) -> None:
    done = keychest("keys", "--db", db_url, "--json")
    assert "no keychest schema yet" in one_error_line(done)
    assert "keychest migrate" in done.stderr
    assert version_of(db_url) is None  # nothing created behind the operator's back

    done = keychest("migrate", "--db", db_url)
    assert done.returncode == 0, done.stderr
    assert f"database migrated from empty to {HEAD}" in done.stdout
    assert keychest("migrate", "--db", db_url).stdout.strip() == f"database is at {HEAD}; nothing to do"
    assert keychest("keys", "--db", db_url, "--json").returncode == 0

    # A database one revision behind: the admin command refuses and leaves it there.
    assert keychest("migrate", "--db", db_url, "--to", PREVIOUS).returncode == 0
    assert version_of(db_url) == PREVIOUS
    line = one_error_line(keychest("domains", "--db", db_url))
    assert f"database is at {PREVIOUS}, this keychest needs {HEAD}" in line
    assert version_of(db_url) == PREVIOUS


def test_serve_refuses_a_newer_schema_in_one_line(db_url: str, tmp_path: Path) -> None:
    assert keychest("migrate", "--db", db_url).returncode == 0
    set_version(db_url, "9999")  # what a newer release leaves behind
    expected = f"Error: database is at 9999, this keychest knows up to {HEAD}: upgrade keychest or roll back"
    assert one_error_line(serve(db_url, tmp_path)) == expected
    assert one_error_line(serve(db_url, tmp_path, "--migrate")) == expected
    assert one_error_line(keychest("keys", "--db", db_url)) == expected
    assert one_error_line(keychest("migrate", "--db", db_url)) == expected
    assert version_of(db_url) == "9999"


def test_serve_upgrades_only_with_migrate(db_url: str, tmp_path: Path) -> None:
    assert keychest("migrate", "--db", db_url, "--to", PREVIOUS).returncode == 0
    line = one_error_line(serve(db_url, tmp_path))
    assert f"database is at {PREVIOUS}, this keychest needs {HEAD}" in line
    assert version_of(db_url) == PREVIOUS

    # --migrate upgrades, then the process runs (a scanner: stopped once it is up).
    proc = subprocess.Popen(
        [*KEYCHEST, "serve", "--db", db_url, "--role", "scanner", "--migrate"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for out in proc.stdout:
            if "keychest scanner running" in out:
                break
        else:
            raise AssertionError("the scanner did not start")
        assert version_of(db_url) == HEAD
    finally:
        proc.terminate()
        proc.wait(10)


def test_rollback_to_base_and_unknown_revision(db_url: str) -> None:
    assert keychest("migrate", "--db", db_url).returncode == 0
    done = keychest("migrate", "--db", db_url, "--to", "0003")
    assert done.returncode == 0 and f"from {HEAD} to 0003" in done.stdout
    assert one_error_line(keychest("migrate", "--db", db_url, "--to", "0042")).startswith(
        "Error: unknown revision 0042"
    )
    assert keychest("migrate", "--db", db_url).returncode == 0
    assert version_of(db_url) == HEAD
