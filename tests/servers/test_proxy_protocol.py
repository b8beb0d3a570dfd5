"""Real client addresses behind a TCP balancer (issue 16 item 1).

The balancer is this test: it writes PROXY protocol headers (v1 text, v2 binary) of its own
making in front of line API requests, and X-Forwarded-For in front of HTTP ones, from
127.0.0.1, which the server is told to trust. Quotas, `keychest keys --json` (created_ip,
last_used_ip) must see the addresses in the headers; a header from an untrusted address is
refused. The TLS listener takes the header too: in plaintext before the client's TLS
handshake, as HAProxy `mode tcp` with `send-proxy` passes a TLS client through.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import struct
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from keychest.protocol import proxy
from tests.support.net import free_port
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


# --- the TLS listener: the header in plaintext, then the client's TLS -------------------------


def tls_server(
    server_factory: Callable[..., LiveServer], tls_files: tuple[Path, Path, Path], *flags: str
) -> tuple[LiveServer, int]:
    cert, key, _ = tls_files
    port = free_port()
    server = server_factory(
        "--line-tls-listen", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key), *flags
    )  # fmt: skip
    return server, port


class BalancedTLS:
    """A client's TLS session through the test's "balancer": the PROXY header first.

    With ``coalesce`` the header and the ClientHello go out in one sendall (one segment, as
    a balancer that forwards the client's first bytes with its header often sends them);
    else the header alone, then the standard library's TLS over the same socket. ``send_first``
    bytes of the header go out alone before the rest.
    """

    def __init__(
        self, port: int, ca_file: Path, header: bytes, *, coalesce: bool, send_first: int = 0
    ) -> None:
        context = ssl.create_default_context(cafile=str(ca_file))
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls: ssl.SSLSocket | ssl.SSLObject
        try:
            if not coalesce:
                self.raw.sendall(header)
                self.tls = context.wrap_socket(self.raw, server_hostname="localhost")
                return
            self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
            if send_first:
                self.raw.sendall(header[:send_first])
            first = header[send_first:]
            while True:
                try:
                    self.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self.raw.sendall(first + self.outgoing.read())  # first: header + ClientHello
                    first = b""
                    self._fill()
            self._flush()
        except BaseException:
            self.raw.close()
            raise

    def _fill(self) -> None:
        data = self.raw.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def _flush(self) -> None:
        if isinstance(self.tls, ssl.SSLObject):
            pending = self.outgoing.read()
            if pending:
                self.raw.sendall(pending)

    def ask(self, payload: bytes) -> bytes:
        """Send request lines; read until as many answers came (or the server closed)."""
        if isinstance(self.tls, ssl.SSLSocket):
            self.tls.sendall(payload)
        else:
            self.tls.write(payload)
            self._flush()
        data = b""
        while data.count(b"status ") < payload.count(b"\n") or not data.endswith(b"\n"):
            try:
                chunk = self.tls.recv(65536) if isinstance(self.tls, ssl.SSLSocket) else self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._fill()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        # wrap_socket took the socket over (self.raw is detached then).
        if isinstance(self.tls, ssl.SSLSocket):
            self.tls.close()
        self.raw.close()


def balanced_tls(port: int, ca_file: Path, header: bytes, payload: bytes, *, coalesce: bool) -> bytes:
    client = BalancedTLS(port, ca_file, header, coalesce=coalesce)
    try:
        return client.ask(payload)
    finally:
        client.close()


def tls_fails(port: int, ca_file: Path, header: bytes, *, coalesce: bool) -> bool:
    """Whether the TLS handshake after ``header`` fails (the server closed instead)."""
    try:
        balanced_tls(port, ca_file, header, b"command ping\n", coalesce=coalesce)
    except (ssl.SSLError, ConnectionError):
        return True
    return False


def test_tls_listener_reads_the_header_before_the_handshake(
    server_factory: Callable[..., LiveServer], tls_files: tuple[Path, Path, Path]
) -> None:
    server, port = tls_server(
        server_factory, tls_files,
        "--proxy-protocol", "--trusted-proxies", "127.0.0.1/32",
        "--keys-per-ip-per-hour", "2", "--apikey-burst", "0",
    )  # fmt: skip
    ca_file = tls_files[2]
    keys: dict[str, str] = {}
    # v1 and v2, the header alone and the header with the ClientHello in one segment.
    cases = [
        ("203.0.113.1", v1("203.0.113.1"), False),
        ("203.0.113.2", v1("203.0.113.2"), True),
        ("203.0.113.3", v2("203.0.113.3"), False),
        ("203.0.113.4", v2("203.0.113.4", tlv=b"\x05\x00\x02ab"), True),
        ("2001:db8::77", v2("2001:db8::77"), True),
    ]
    for address, header, coalesce in cases:
        answer = balanced_tls(port, ca_file, header, b"command apikey\n", coalesce=coalesce)
        assert b"status ok 200 new API key" in answer, (address, answer)
        keys[address] = data_of(answer)
    # A header in two parts, its second sent with the ClientHello.
    client = BalancedTLS(port, ca_file, v1("203.0.113.5"), coalesce=True, send_first=20)
    try:
        answer = client.ask(b"command apikey\n")
    finally:
        client.close()
    assert b"status ok 200 new API key" in answer, answer
    # The quota counts the client's address, not the balancer's: 203.0.113.1's third key is refused.
    assert b"status ok" in balanced_tls(port, ca_file, v2("203.0.113.1"), b"command apikey\n", coalesce=True)
    refused = balanced_tls(port, ca_file, v1("203.0.113.1"), b"command apikey\n", coalesce=False)
    assert b"status error 429" in refused, refused
    # One session, several requests; last_used_ip follows the header of the request's connection.
    used = balanced_tls(
        port, ca_file, v1("198.51.100.40"),
        f"command add apikey {keys['203.0.113.3']} domain a.example\ncommand ping\n".encode(),
        coalesce=True,
    )  # fmt: skip
    assert b"status ok 200 added a.example" in used and b"status ok 200 pong" in used, used
    # The balancer's own health check (LOCAL) is served as the balancer.
    assert b"status ok 200 pong" in balanced_tls(
        port, ca_file, v2("", local=True), b"command ping\n", coalesce=True
    )

    rows = keys_by_prefix(server)
    created = {row["created_ip"] for row in rows.values()}
    assert created == {f"203.0.113.{n}" for n in range(1, 6)} | {"2001:db8::77"}
    third = next(row for prefix, row in rows.items() if keys["203.0.113.3"].startswith(prefix))
    assert third["created_ip"] == "203.0.113.3"
    assert third["last_used_ip"] == "198.51.100.40"
    # The plain listener of the same server still reads its headers.
    assert b"status ok 200 pong" in exchange(server.line_port, v1("203.0.113.50") + b"command ping\n")


def test_tls_listener_refuses_a_trusted_peer_without_a_valid_header(
    server_factory: Callable[..., LiveServer], tls_files: tuple[Path, Path, Path]
) -> None:
    _, port = tls_server(server_factory, tls_files, "--proxy-protocol", "--trusted-proxies", "127.0.0.1/32")
    ca_file = tls_files[2]
    # A balancer connection that stops inside its header: closed at the handshake time-out.
    stalled = socket.create_connection(("127.0.0.1", port), timeout=30)
    stalled.sendall(v1("203.0.113.7")[:12])
    started = time.monotonic()
    # No TLS has begun: the refusal is a plaintext line, then the socket is closed.
    answer = exchange(port, b"PROXY TCP4 nonsense\r\ncommand ping\n")
    assert answer.startswith(b"status error 400 PROXY v1 header"), answer
    assert exchange(port, b"command ping\n").startswith(b"status error 400 expected a PROXY protocol header")
    # A TLS client: a garbage header, or none (the ClientHello first), ends the connection.
    assert tls_fails(port, ca_file, b"PROXY TCP4 nonsense\r\n", coalesce=True)
    assert tls_fails(port, ca_file, b"", coalesce=False)
    # A good header still works after all that.
    assert b"status ok 200 pong" in balanced_tls(
        port, ca_file, v1("203.0.113.8"), b"command ping\n", coalesce=True
    )
    with stalled:
        assert stalled.recv(100) == b""
    assert 8 < time.monotonic() - started < 20


def test_tls_listener_refuses_a_header_from_an_untrusted_address(
    server_factory: Callable[..., LiveServer], tls_files: tuple[Path, Path, Path]
) -> None:
    server, port = tls_server(
        server_factory, tls_files, "--proxy-protocol", "--trusted-proxies", "192.0.2.0/24"
    )
    ca_file = tls_files[2]
    for header in (v1("203.0.113.9"), v2("203.0.113.9")):
        answer = exchange(port, header + b"command apikey\n")
        assert answer == PROXY_REFUSED_LINE, answer
        assert tls_fails(port, ca_file, header, coalesce=True)
        assert tls_fails(port, ca_file, header, coalesce=False)
    # The same untrusted client speaking TLS at once is served, under its own address.
    answer = balanced_tls(port, ca_file, b"", b"command apikey\n", coalesce=False)
    assert b"status ok 200 new API key" in answer, answer
    assert {row["created_ip"] for row in keys_by_prefix(server).values()} == {"127.0.0.1"}


PROXY_REFUSED_LINE = (
    b"status error 403 PROXY header from an address that is not a trusted proxy (--trusted-proxies)\n"
)


def test_tls_listener_caps_connections_per_client_behind_the_balancer(
    server_factory: Callable[..., LiveServer], tls_files: tuple[Path, Path, Path]
) -> None:
    _, port = tls_server(
        server_factory, tls_files,
        "--proxy-protocol", "--trusted-proxies", "127.0.0.1/32", "--max-connections-per-ip", "1",
    )  # fmt: skip
    ca_file = tls_files[2]
    held = BalancedTLS(port, ca_file, v2("203.0.113.20"), coalesce=True)
    try:
        assert b"status ok 200 pong" in held.ask(b"command ping\n")
        # The same client again, through the same balancer: over its cap.
        again = balanced_tls(port, ca_file, v1("203.0.113.20"), b"command ping\n", coalesce=False)
        assert again.startswith(b"status error 503 too many connections from your address"), again
        # Another client through the same balancer connection address: its own cap.
        other = balanced_tls(port, ca_file, v1("203.0.113.21"), b"command ping\n", coalesce=True)
        assert b"status ok 200 pong" in other, other
    finally:
        held.close()
