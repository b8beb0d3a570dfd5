"""PostgreSQL restarted under load: keychest reconnects and loses nothing it acknowledged.

Runs bench/pg_restart.py, which restarts a PRIVATE PostgreSQL cluster it creates in a temp
folder (initdb + pg_ctl), never the shared one other tests are using at the same moment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INITDB = Path("/usr/lib/postgresql/15/bin/initdb")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not INITDB.exists(), reason="needs PostgreSQL 15 server binaries (private cluster)"),
]


def test_postgresql_restart_under_load() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pg_restart.py"), "--seconds", "30", "--restarts", "3"],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "0 lost" in done.stdout
