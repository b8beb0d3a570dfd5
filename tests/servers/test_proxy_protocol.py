"""Real client addresses behind a TCP balancer (issue 16 item 1).

The balancer is this test: it writes PROXY protocol headers (v1 text, v2 binary) of its own
making in front of line API requests, and X-Forwarded-For in front of HTTP ones, from
127.0.0.1, which the server is told to trust. Quotas, `keychest keys --json` (created_ip,
last_used_ip) must see the addresses in the headers; a header from an untrusted address is
refused.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import urllib.request
from collections.abc import Callable

import pytest

from keychest.protocol import proxy
from tests.support.server import LiveServer

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str, source_port: int = 40000) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    destination = "::1" if ":" in source else "127.0.0.1"
    return f"PROXY {family} {source} {destination} {source_port} 10023\r\n".encode()


def v2(source: str, source_port: int = 40000, *, local: bool = False, tlv: bytes = b"") -> bytes:
    if local:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    src = ipaddress.ip_address(source)
    if src.version == 4:
        addresses = src.packed + ipaddress.IPv4Address("127.0.0.1").packed
        family = 0x11
    else:
        addresses = src.packed + ipaddress.IPv6Address("::1").packed
        family = 0x21
    body = addresses + struct.pack("!HH", source_port, 10023) + tlv
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def exchange(port: int, payload: bytes, answers: int = 1) -> bytes:
    """Send bytes as a balancer would (header, then the client's lines); read the answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        while data.count(b"status ") < answers:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def data_of(answer: bytes) -> str:
    return answer.split(b"data ", 1)[1].split(b"\n", 1)[0].decode()


def keys_by_prefix(server: LiveServer) -> dict[str, dict[str, str]]:
    done = server.cli("keys", "--json")
    assert done.returncode == 0, done.stderr
    return {row["prefix"]: row for row in json.loads(done.stdout)}


# --- the parser, on bytes alone -------------------------------------------------------------


def test_parser_reads_both_versions_and_waits_for_more() -> None:
    header = v1("203.0.113.7", 5555)
    assert proxy.parse(header + b"command ping\n") == proxy.ProxyHeader("203.0.113.7", 5555, len(header))
    assert proxy.parse(header[:10]) is None
    six = v1("2001:db8::1")
    assert proxy.parse(six) == proxy.ProxyHeader("2001:db8::1", 40000, len(six))
    assert proxy.parse(b"PROXY UNKNOWN\r\n") == proxy.ProxyHeader(None, None, 15)
    binary = v2("198.51.100.2", 6000, tlv=b"\x05\x00\x02ab")  # a TLV (unique id) is skipped
    assert proxy.parse(binary + b"rest") == proxy.ProxyHeader("198.51.100.2", 6000, len(binary))
    for cut in (1, 12, 15, len(binary) - 1):
        assert proxy.parse(binary[:cut]) is None
    assert proxy.parse(v2("2001:db8::9")).source == "2001:db8::9"  # type: ignore[union-attr]
    assert proxy.parse(v2("", local=True)) == proxy.ProxyHeader(None, None, 16)


@pytest.mark.parametrize(
    "bad",
    [
        b"command ping\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2 3\r\n",
        b"PROXY TCP4 2001:db8::1 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 2\r\n",
        b"PROXY TCP4 " + b"1" * 120,
        V2_SIGNATURE + bytes([0x31, 0x11, 0, 0]),
        V2_SIGNATURE + bytes([0x21, 0x11, 0, 4]) + b"abcd",
    ],
)
def test_parser_refuses_what_is_not_a_header(bad: bytes) -> None:
    with pytest.raises(proxy.ProxyError):
        proxy.parse(bad)


def test_trusted_networks() -> None:
    networks = proxy.parse_networks(["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"])
    assert proxy.is_trusted("10.1.2.3", networks)
    assert proxy.is_trusted("::ffff:127.0.0.1", networks)
    assert proxy.is_trusted("2001:db8::5", networks)
    assert not proxy.is_trusted("127.0.0.2", networks)
    assert not proxy.is_trusted(None, networks)


# --- a live server behind the test's "balancer" ----------------------------------------------


def test_line_api_sees_the_client_behind_the_balancer(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory(
        "--proxy-protocol", "--trusted-proxies", "192.0.2.0/24,127.0.0.1",
        "--keys-per-ip-per-hour", "2", "--apikey-burst", "0",
    )  # fmt: skip
    port = server.line_port
    # Five clients, each under its own address: every one gets its keys, though all come
    # through one balancer address that would have hit the quota of 2 at the third.
    keys: dict[str, str] = {}
    for n in range(1, 6):
        address = f"203.0.113.{n}"
        header = v1(address) if n % 2 else v2(address)
        answer = exchange(port, header + b"command apikey\n")
        assert b"status ok" in answer, answer
        keys[address] = data_of(answer)
    # The quota is per client address: the same client's third key within the hour is refused.
    assert b"status ok" in exchange(port, v2("203.0.113.1") + b"command apikey\n")
    assert b"status error 429" in exchange(port, v1("203.0.113.1") + b"command apikey\n")
    # IPv6 clients, through an IPv4 balancer connection.
    assert b"status ok" in exchange(port, v2("2001:db8::77") + b"command apikey\n")
    # The key of 203.0.113.3 used from another address: last_used_ip follows the request.
    used = exchange(
        port, v1("198.51.100.40") + f"command add apikey {keys['203.0.113.3']} domain a.example\n".encode()
    )
    assert b"status ok" in used, used

    rows = keys_by_prefix(server)
    created = {row["created_ip"] for row in rows.values()}
    assert {f"203.0.113.{n}" for n in range(1, 6)} | {"2001:db8::77"} <= created
    assert "127.0.0.1" not in created
    third = next(row for prefix, row in rows.items() if keys["203.0.113.3"].startswith(prefix))
    assert third["created_ip"] == "203.0.113.3"
    assert third["last_used_ip"] == "198.51.100.40"

    # The balancer's own health check (LOCAL): the connection is the balancer's.
    assert b"status ok" in exchange(port, v2("", local=True) + b"command ping\n")
    # A trusted peer that sends no header is refused, not taken for the balancer.
    assert b"status error 400" in exchange(port, b"command ping\n")
    assert b"status error 400" in exchange(port, b"PROXY TCP4 nonsense\r\ncommand ping\n")


def test_header_from_an_untrusted_address_is_refused(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory("--proxy-protocol", "--trusted-proxies", "192.0.2.0/24")
    for header in (v1("203.0.113.9"), v2("203.0.113.9")):
        answer = exchange(server.line_port, header + b"command apikey\n")
        assert answer.startswith(b"status error 403"), answer
        assert answer.count(b"status ") == 1  # closed: nothing after the header was served
    # The same untrusted client without a header is served, under its own address.
    answer = exchange(server.line_port, b"command apikey\n")
    assert b"status ok" in answer
    assert {row["created_ip"] for row in keys_by_prefix(server).values()} == {"127.0.0.1"}


def _claim(server: LiveServer, email: str, forwarded_for: str) -> None:
    request = urllib.request.Request(
        f"{server.http_url}/api/v1.0/access/claim/{email}", headers={"X-Forwarded-For": forwarded_for}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_http_forwarded_for_only_from_trusted_proxies(server_factory: Callable[..., LiveServer]) -> None:
    trusting = server_factory("--trusted-proxies", "127.0.0.1/32")
    _claim(trusting, "one@example.org", "198.51.100.23")
    assert {row["created_ip"] for row in keys_by_prefix(trusting).values()} == {"198.51.100.23"}

    # Without --trusted-proxies the header is anyone's to write: ignored.
    plain = server_factory()
    _claim(plain, "two@example.org", "198.51.100.23")
    assert {row["created_ip"] for row in keys_by_prefix(plain).values()} == {"127.0.0.1"}
