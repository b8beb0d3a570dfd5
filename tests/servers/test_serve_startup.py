"""`keychest serve` starting, failing to start, and losing its database file, as a user sees it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from keychest.client import LineClient
from tests.support.net import free_port
from tests.support.server import KEYCHEST, LiveServer, loopback_resolver

pytestmark = pytest.mark.timeout(120)

request_cleanup: list[Path] = []


@pytest.fixture(autouse=True)
def _remove_scratch() -> Iterator[None]:
    yield
    while request_cleanup:
        shutil.rmtree(request_cleanup.pop(), ignore_errors=True)


def serve(data_dir: Path, *extra: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run `keychest serve` that is expected to stop on its own (it cannot start)."""
    args = [
        *prefix, *KEYCHEST, "serve", "--data-dir", str(data_dir), "--mail-domain", "keychest.test",
        "--resolver", loopback_resolver(), *extra,
    ]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def assert_one_clear_line(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: {expected}"], done.stderr
    assert "keychest serving" not in done.stderr


@pytest.mark.parametrize("which", ["--line-listen", "--http-listen", "--line-tls-listen"])
def test_port_in_use_is_one_line(tmp_path: Path, which: str) -> None:
    ports = {"--line-listen": free_port(), "--http-listen": free_port(), "--line-tls-listen": free_port()}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[which]))
        taken.listen()
        cert = tmp_path / "both.pem"  # key and chain in one file serve as --tls-cert and --tls-key
        trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(cert))
        done = serve(
            tmp_path / "data",
            *("--line-listen", f"127.0.0.1:{ports['--line-listen']}"),
            *("--http-listen", f"127.0.0.1:{ports['--http-listen']}"),
            *("--line-tls-listen", f"127.0.0.1:{ports['--line-tls-listen']}"),
            *("--tls-cert", str(cert), "--tls-key", str(cert)),
        )
    assert_one_clear_line(
        done,
        f"cannot listen on 127.0.0.1:{ports[which]} ({which}): "
        "the address is already in use (another keychest, or another program?)",
    )
    # Nothing it opened before it noticed is left behind.
    for port in ports.values():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


def test_read_only_data_directory_is_one_line() -> None:
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as
    # nobody when the tests run as root (root writes anywhere).
    base = Path(tempfile.mkdtemp(prefix="keychest-ro-"))
    request_cleanup.append(base)
    base.chmod(0o755)
    data = base / "data"
    data.mkdir()
    data.chmod(0o555)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv")
        prefix = (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups")
    done = serve(
        data,
        *("--line-listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{free_port()}"),
        prefix=prefix,
    )
    db_file = data.resolve() / "keychest.db"
    assert_one_clear_line(
        done,
        f"cannot open the database {db_file}: the folder {data.resolve()} is not writable "
        "(keychest keeps keychest.db and its -wal and -shm files there; see --data-dir)",
    )


def test_start_up_names_its_addresses(live_server: LiveServer) -> None:
    expected = (
        f"keychest serving: line API on 127.0.0.1:{live_server.line_port}; "
        f"dashboard and REST on http://127.0.0.1:{live_server.http_port}/ (API docs at /docs)"
    )
    deadline = time.monotonic() + 20
    while expected not in live_server.log():
        assert time.monotonic() < deadline, live_server.log()
        time.sleep(0.05)


def test_deleted_database_file_refuses_writes(live_server: LiveServer) -> None:
    """rm keychest.db under a running server: 503 and a logged error, never an ok a restart loses."""
    with LineClient("127.0.0.1", live_server.line_port) as client:
        issued = client.request("apikey")
        assert issued.ok and issued.data
        key = issued.data
        assert client.request("add", apikey=key, domain="before.example").ok
        (live_server.data_dir / "keychest.db").unlink()
        acknowledged_after = []
        for i in range(5):
            reply = client.request("add", apikey=key, domain=f"after{i}.example")
            assert (reply.code, reply.text) == (503, "storage unavailable; nothing was changed, retry")
            if reply.ok:
                acknowledged_after.append(i)
        assert client.request("apikey").code == 503
        assert client.request("ping").ok  # the server itself is alive and says what is wrong
    assert acknowledged_after == []
    assert "was deleted or replaced while running" in live_server.log()
    # After a restart, whatever the server still has agrees with what it acknowledged.
    live_server.stop()
    live_server.start()
    listed = {d["domain"] for d in json.loads(live_server.cli("domains", "--json").stdout)}
    assert not any(name.startswith("after") for name in listed)


def test_line_api_hints(live_server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", live_server.line_port), timeout=5) as sock:
        sock.sendall(b"ping\ncommand help\ncommand add apikey nosuchkeynosuchkey00 domain x.example\n")
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b"\n") < 3 and time.monotonic() < deadline:
            received += sock.recv(4096)
    first, helped, unknown = received.decode().splitlines()
    assert first == (
        "status error 400 odd number of tokens: a request is key value pairs; "
        "requests look like: command ping"
    )
    assert helped == (
        "status ok 200 commands: apikey | claim apikey K email E | add apikey K domain D[:port] | "
        "expiration apikey K domain D[:port] | renewal apikey K domain D status S [sha256 H] [host N] | "
        "ping | maildomain | help"
    )
    assert unknown == "status error 401 unknown API key; get one with: command apikey"
