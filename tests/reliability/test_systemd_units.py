"""deploy/systemd units that work (issue 16 item 6): `systemd-analyze verify` accepts them,
the data directory is one systemd creates (StateDirectory=), they start after a local
PostgreSQL, and every flag they pass exists."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
KEYCHEST_BIN = Path(sys.executable).with_name("keychest")


def unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian: systemd)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert KEYCHEST_BIN.exists()
    for path in UNITS:
        # The units name /opt/keychest/venv; here the keychest of this venv stands in for it.
        text = path.read_text().replace("/opt/keychest/venv/bin/keychest", str(KEYCHEST_BIN))
        (tmp_path / path.name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / p.name) for p in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_units_create_their_directory_and_order_after_postgresql() -> None:
    assert {p.name for p in UNITS} == {
        "keychest-api.service",
        "keychest-scanner.service",
        "keychest-mailer.service",
    }
    listens: list[str] = []
    for path in UNITS:
        parsed = unit(path)
        service = dict(parsed["Service"])
        assert service.get("StateDirectory") == "keychest", path.name
        # ProtectSystem=strict: the only writable place is one systemd itself creates.
        assert "ReadWritePaths" not in service, path.name
        assert "postgresql.service" in parsed["Unit"]["After"].split(), path.name
        assert "postgresql.service" in parsed["Unit"]["Wants"].split(), path.name
        argv = shlex.split(service["ExecStart"])
        assert argv[:2] == ["/opt/keychest/venv/bin/keychest", "serve"]
        # Every flag the unit passes is one `serve` knows.
        done = subprocess.run(
            [str(KEYCHEST_BIN), "serve", "--help"], capture_output=True, text=True, timeout=60
        )
        for flag in (a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")):
            assert flag in done.stdout, (path.name, flag)
        if "--http-listen" in argv:
            listens.append(argv[argv.index("--http-listen") + 1])
    # Scanner and mailer share machines with the API (8080, from the env file): ports of their own.
    assert len(listens) == 2 and len(set(listens)) == 2 and not any(x.endswith(":8080") for x in listens)
