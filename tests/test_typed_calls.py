"""Keychest.call/read check each service call's arguments against the function (ParamSpec):
mypy refuses a wrong argument at the call site instead of the call failing at run time."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

pytestmark = pytest.mark.slow  # a mypy run over the package: several seconds

CALLS = """
from keychest.service import domains, keys
from keychest.service.facade import Keychest


def use(service: Keychest) -> None:
    issued: keys.IssuedKey = service.call(keys.create)
    service.from_ip("192.0.2.1").call(domains.add, issued.key, "www.example.net")
    service.call(domains.add, issued.key, 443)  # BAD: a domain is a str
    service.read(keys.create, key=b"raw")  # BAD: the chosen key is a str
    service.call(keys.create, ip="192.0.2.1")  # BAD: the address goes through from_ip
    wrong: str = service.call(keys.create)  # BAD: it returns an IssuedKey
"""


def test_mypy_checks_service_call_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYPYPATH", str(Path(__file__).parents[1] / "src"))
    source = tmp_path / "calls.py"
    source.write_text(CALLS)
    out, err, status = api.run(
        [str(source), "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--show-error-codes"]
    )
    assert status == 1, err
    flagged = sorted({int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line})
    bad = [n for n, line in enumerate(CALLS.splitlines(), 1) if "# BAD" in line]
    assert flagged == bad, out
