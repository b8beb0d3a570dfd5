"""The set-up scripts wait for another apt (unattended-upgrades on a fresh machine) instead of
failing on its lock."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.hook.support import REPO


def test_every_apt_get_waits_for_the_lock() -> None:
    calls = [
        (script.name, line.strip())
        for script in sorted((REPO / "scripts").glob("*.sh"))
        for line in script.read_text().splitlines()
        if re.search(r"\bapt-get .*\b(update|install)\b", line) and not re.match(r"\s*(#|echo)", line)
    ]
    assert len(calls) == 6, calls
    assert [c for c in calls if "-o DPkg::Lock::Timeout=" not in c[1]] == []


def test_install_certbot_test_deps_passes_the_lock_timeout(tmp_path: Path) -> None:
    # A PATH without certbot, pebble, shellcheck and openssl, and an apt-get that records its
    # arguments: the script must ask apt for them, waiting for the lock.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "apt-calls"
    for tool in ("bash", "grep", "python3", "dirname", "cat"):
        for folder in ("/usr/bin", "/bin"):
            if (Path(folder) / tool).exists():
                (bin_dir / tool).symlink_to(Path(folder) / tool)
                break
    fake_apt = bin_dir / "apt-get"
    fake_apt.write_text(f'#!/bin/bash\necho "$*" >>{record}\n')
    fake_apt.chmod(0o755)
    venv = tmp_path / "venv"  # certbot 5.x already there: no pip run
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "certbot").write_text("#!/bin/bash\necho certbot 5.8.0\n")
    (venv / "bin" / "certbot").chmod(0o755)
    env = {**os.environ, "PATH": str(bin_dir), "CERTBOT_VENV": str(venv)}
    # it fails at its closing `certbot --version` (the fake apt installed nothing): the calls count
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-certbot-test-deps.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = record.read_text().splitlines()
    assert [c.split()[:3] for c in calls] == [
        ["-o", "DPkg::Lock::Timeout=600", "update"],
        ["-o", "DPkg::Lock::Timeout=600", "install"],
    ], proc.stderr
    assert all(tool in calls[1].split() for tool in ("certbot", "pebble", "shellcheck", "openssl"))
