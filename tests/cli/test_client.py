"""`keychest client`: every subcommand, plain and `--json`, against a live server."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.net import free_port
from tests.support.server import KEYCHEST, LiveServer

pytestmark = pytest.mark.timeout(120)


def client(server: LiveServer | str, *args: str) -> subprocess.CompletedProcess[str]:
    address = server if isinstance(server, str) else server.line_addr
    return subprocess.run(
        [*KEYCHEST, "client", "--server", address, *args], capture_output=True, text=True, timeout=30
    )


def reply(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    value = json.loads(done.stdout)
    assert isinstance(value, dict)
    return value


def test_every_subcommand_plain(live_server: LiveServer) -> None:
    ping = client(live_server, "ping")
    assert (ping.returncode, ping.stdout, ping.stderr) == (0, "200 pong\n", "")

    made = client(live_server, "apikey")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert len(key) >= 16 and " " not in key
    assert made.stderr.startswith("200 ")

    claimed = client(live_server, "claim", key, "owner@example.org")
    assert claimed.returncode == 0, claimed.stderr
    assert claimed.stdout.startswith("200 claimed")

    added = client(live_server, "add", key, "www.example.net")
    assert (added.returncode, added.stdout) == (0, "200 added www.example.net\n")

    known = client(live_server, "expiration", key, "www.example.net")
    assert known.returncode == 0, known.stderr
    assert known.stdout.startswith("state=") and known.stderr.startswith("200 ")

    refused = client(live_server, "add", "no-such-key-0000000000", "www.example.net")
    assert refused.returncode == 1
    assert refused.stdout == "" and refused.stderr.startswith("401 unknown API key")


def test_every_subcommand_json(live_server: LiveServer) -> None:
    assert reply(client(live_server, "--json", "ping")) == {
        "ok": True,
        "code": 200,
        "text": "pong",
        "data": None,
    }
    made = client(live_server, "--json", "apikey")
    assert made.returncode == 0, made.stderr
    issued = reply(made)
    assert issued["ok"] is True and issued["code"] == 200
    key = issued["data"]
    assert isinstance(key, str) and key

    claimed = reply(client(live_server, "--json", "claim", key, "owner@example.org"))
    assert claimed["ok"] is True and str(claimed["text"]).startswith("claimed")

    added = reply(client(live_server, "--json", "add", key, "www.example.net:8443"))
    assert added == {"ok": True, "code": 200, "text": "added www.example.net:8443", "data": None}

    facts = reply(client(live_server, "--json", "expiration", key, "www.example.net:8443"))
    assert facts["ok"] is True and str(facts["data"]).startswith("state=")

    missing = client(live_server, "--json", "expiration", key, "never-added.example")
    assert missing.returncode == 1
    answer = reply(missing)
    assert answer["ok"] is False and answer["code"] == 404


def test_unreachable_server_is_one_line() -> None:
    done = client(f"127.0.0.1:{free_port()}", "ping")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: cannot reach 127.0.0.1:")
    assert "Traceback" not in done.stderr
