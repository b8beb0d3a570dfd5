"""Item 5 of the security review: the scanner cannot be pointed at the server's own network.

A `keychest serve` WITHOUT --allow-private-targets asks a test DNS server that answers names
with loopback in every disguise (127.0.0.1, ::1, ::ffff:127.0.0.1, 0.0.0.0); IP literals are
registered directly too. A plain TCP listener on those addresses counts every connection:
none may arrive, and every address must be recorded as `blocked`.

The positive control, a second server WITH --allow-private-targets, does reach the listener,
and its DNS server sees exactly one A and one AAAA query per scan: the scanner connects to the
address it checked and never resolves the name a second time (DNS rebinding has no second
answer to swap in).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.scan.tls_servers import DNSServer, free_port, ipv6_available
from tests.security.support import line, rows
from tests.support.server import LiveServer

pytestmark = pytest.mark.timeout(120)

SOURCE = "127.0.0.101"


class CountingListener:
    """Accepts TCP connections on loopback (IPv4 and, where there is one, IPv6) and counts them."""

    def __init__(self) -> None:
        self.hosts = ["127.0.0.1", "::1"] if ipv6_available() else ["127.0.0.1"]
        self.port = free_port(self.hosts)
        self.accepted: list[str] = []
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        for host in self.hosts:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.port))
            sock.listen(64)
            sock.settimeout(0.1)
            self._sockets.append(sock)
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(peer[0])
            conn.close()

    def close(self) -> None:
        self._stop.set()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    counting = CountingListener()
    try:
        yield counting
    finally:
        counting.close()


def wait_scanned(server: LiveServer, hosts: list[str], timeout: float = 20) -> dict[str, list[tuple]]:
    """(ip, error_kind) per address of each host once every host has a scan result."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, list[tuple]] = {}
        for host, ip, kind in rows(
            server,
            "SELECT e.host, s.ip, s.error_kind FROM address_states s "
            "JOIN endpoints e ON e.id = s.endpoint_id",
        ):
            found.setdefault(host, []).append((ip, kind))
        if all(host in found for host in hosts):
            return found
        assert time.monotonic() < deadline, f"not scanned within {timeout}s: {set(hosts) - set(found)}"
        time.sleep(0.2)


NAMES = {
    "loop.rebind.test": ["127.0.0.1"],
    "six.rebind.test": ["::1"],
    "mapped.rebind.test": ["::ffff:127.0.0.1"],
    "zero.rebind.test": ["0.0.0.0"],
    "many.rebind.test": ["127.0.0.1", "127.0.0.2", "::ffff:127.0.0.1"],
}


def register(server: LiveServer, port: int, domains: list[str]) -> str:
    key = line(server, SOURCE, "apikey").data
    assert key
    for domain in domains:
        reply = line(server, SOURCE, "add", apikey=key, domain=f"{domain}:{port}")
        assert reply.ok, (domain, reply)
    return key


# IPv6 forms that carry an IPv4 address, and IPv4 ranges that are not globally routable
# (issue 10 item 6): literal as registered -> host as stored.
DISGUISED = {
    "[64:ff9b::7f00:1]": "64:ff9b::7f00:1",  # NAT64
    "[64:ff9b:1::1]": "64:ff9b:1::1",  # local-use NAT64
    "[::127.0.0.1]": "::7f00:1",  # IPv4-compatible
    "[::ffff:0:7f00:1]": "::ffff:0:7f00:1",  # IPv4-translated
    "[2002:7f00:1::1]": "2002:7f00:1::1",  # 6to4
    "[fec0::1]": "fec0::1",  # site-local
    "192.0.0.1": "192.0.0.1",
    "100.64.0.1": "100.64.0.1",
    "198.18.0.1": "198.18.0.1",
    "240.0.0.1": "240.0.0.1",
}


def test_loopback_in_any_disguise_is_never_connected(server_factory, listener: CountingListener) -> None:
    literals = ["127.0.0.1", "[::ffff:127.0.0.1]", "0.0.0.0", "[::1]", "127.1.2.3", *DISGUISED]
    stored = ["127.0.0.1", "::ffff:7f00:1", "0.0.0.0", "::1", "127.1.2.3", *DISGUISED.values()]
    with DNSServer(NAMES) as dns:
        server = server_factory("--resolver", dns.address, "--scan-timeout", "2")
        key = register(server, listener.port, [*NAMES, *literals])
        # Every scan has finished: a connection that slipped through was accepted (and
        # counted) before the probe that made it could end.
        scanned = wait_scanned(server, [*NAMES, *stored])
        messages = {error for (error,) in rows(server, "SELECT error FROM address_states")}
        facts = line(server, SOURCE, "expiration", apikey=key, domain=f"100.64.0.1:{listener.port}").data
    assert listener.accepted == []
    assert facts is not None and "errors=blocked" in facts and "allow_with=--allow-private-targets" in facts
    for host, results in scanned.items():
        assert results and all(kind == "blocked" for _, kind in results), (host, results)
    assert messages and all("--allow-private-targets" in (m or "") for m in messages), messages
    # Every address the names resolved to was judged on its own.
    assert {ip for ip, _ in scanned["many.rebind.test"]} == {"127.0.0.1", "127.0.0.2", "::ffff:7f00:1"}


def test_allowed_private_targets_connect_to_the_checked_address_only(
    server_factory, listener: CountingListener
) -> None:
    """The positive control: with the guard off, the listener does see the scanner, and the
    name was resolved once per scan (A and AAAA): the connection went to the address that was
    resolved (and, with the guard on, checked), not to a second answer for the same name."""
    with DNSServer({"loop.rebind.test": ["127.0.0.1"]}) as dns:
        server = server_factory("--resolver", dns.address, "--scan-timeout", "2", "--allow-private-targets")
        register(server, listener.port, ["loop.rebind.test"])
        scanned = wait_scanned(server, ["loop.rebind.test"])
        queries = [q for q in dns.queries if q[0] == "loop.rebind.test"]
    assert listener.accepted and set(listener.accepted) == {"127.0.0.1"}
    assert scanned["loop.rebind.test"][0][1] != "blocked"
    assert sorted(queries) == [("loop.rebind.test", "A"), ("loop.rebind.test", "AAAA")]


def keychest_scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from keychest.cli import main; main()",
            "scan",
            "--json",
            "--timeout",
            "3",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keychest_scan_refuses_disguised_literals_without_connecting(listener: CountingListener) -> None:
    targets = [f"{literal}:{listener.port}" for literal in ["[::ffff:127.0.0.1]", *DISGUISED]]
    done = keychest_scan(*targets)  # returns once every target has its result
    assert listener.accepted == []
    results = json.loads(done.stdout)
    assert done.returncode == 2
    assert [(r["ip"], r["error_kind"]) for r in results] == [
        (ip, "blocked") for ip in ["::ffff:7f00:1", *DISGUISED.values()]
    ]
    assert all("--allow-private-targets" in r["error"] for r in results)
    # The positive control: the same listener does count a scan it is allowed to receive.
    allowed = keychest_scan("--allow-private-targets", f"127.0.0.1:{listener.port}")
    assert json.loads(allowed.stdout)[0]["error_kind"] != "blocked"
    assert listener.accepted == ["127.0.0.1"]
