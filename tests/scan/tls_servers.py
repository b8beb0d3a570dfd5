"""Real servers on 127.0.0.1 / ::1 for tests: TLS with a given certificate, hostile TCP
servers, and a tiny DNS server. Reusable by any test that needs a TLS endpoint:

    with TestServers() as servers:
        port = servers.tls(chain_pem, key_pem)              # 127.0.0.1 and ::1, free port
        port = servers.tls_trustme(ca.issue_cert("x.test"))  # straight from trustme
        port = servers.hostile("silent")

Everything runs on one event loop in a daemon thread, so servers keep answering while the
test's own code (or a subprocess) blocks; `close()` stops every server it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

T = TypeVar("T")

LOOPBACKS = ("127.0.0.1", "::1")


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_port(hosts: Iterable[str] = LOOPBACKS) -> int:
    """A TCP port free on every host given at once (so one name can have it on two addresses)."""
    hosts = list(hosts)
    for _ in range(100):
        sockets = []
        try:
            first = socket.socket(socket.AF_INET6 if ":" in hosts[0] else socket.AF_INET)
            sockets.append(first)
            first.bind((hosts[0], 0))
            port = first.getsockname()[1]
            for host in hosts[1:]:
                other = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                sockets.append(other)
                other.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no port free on all of " + ", ".join(hosts))


class _Loop:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_all(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _hold_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve a TLS client: wait until it hangs up (a scanner does right after the handshake)."""
    try:
        await asyncio.wait_for(reader.read(1024), 10)
    except (TimeoutError, OSError, ssl.SSLError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# Hostile behaviours, each given the raw connection after accept.


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and reads, never answers: an endless handshake."""
    while await reader.read(4096):
        pass


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A plausible TLS record header, then its body one byte at a time, forever."""
    await reader.read(4096)
    writer.write(b"\x16\x03\x03\x40\x00")
    while True:
        writer.write(b"\x02")
        await writer.drain()
        await asyncio.sleep(0.05)


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Not TLS at all: a plain HTTP answer on the TLS port."""
    await reader.read(4096)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(30)


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the ClientHello and hangs up."""
    await reader.read(4096)


async def _close_mid(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Starts a ServerHello record, then hangs up in the middle of it."""
    await reader.read(4096)
    writer.write(b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03" + b"\x11" * 20)
    await writer.drain()


async def _alert(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers the ClientHello with a fatal unrecognized_name alert, as strict SNI servers do."""
    await reader.read(4096)
    writer.write(b"\x15\x03\x03\x00\x02\x02\x70")
    await writer.drain()
    await asyncio.sleep(1)


async def _flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Endless well-formed-looking handshake records, as fast as the client takes them."""
    await reader.read(4096)
    record = b"\x16\x03\x03\x40\x00" + b"\x0b" * 0x4000
    while True:
        writer.write(record)
        await writer.drain()


def _hangs_up(behaviour: Any) -> Any:
    """Run a behaviour, then close the connection; quietly, also when the test run ends."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await behaviour(reader, writer)
        except (asyncio.CancelledError, OSError):
            # Swallowed: on 3.11 a cancelled connection callback is logged as an error.
            pass
        finally:
            writer.close()

    return handler


HOSTILE = {
    name: _hangs_up(behaviour)
    for name, behaviour in {
        "silent": _silent,
        "trickle": _trickle,
        "garbage": _garbage,
        "close": _close,
        "close_mid": _close_mid,
        "flood": _flood,
        "alert": _alert,
    }.items()
}


class DNSServer:
    """A tiny authoritative DNS server over UDP: answers A and AAAA from a mapping, NXDOMAIN else."""

    def __init__(self, records: Mapping[str, Iterable[str]], host: str = "127.0.0.1") -> None:
        self.records = {name.rstrip(".").lower(): list(ips) for name, ips in records.items()}
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((host, 0))
        self.socket.settimeout(0.1)
        self.address = f"{host}:{self.socket.getsockname()[1]}"
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()

    def _answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        wanted = (
            4 if question.rdtype == dns.rdatatype.A else 6 if question.rdtype == dns.rdatatype.AAAA else 0
        )
        addresses = [ip for ip in self.records[name] if ipaddress.ip_address(ip).version == wanted]
        if addresses:
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", rdtype, addresses))
        return response.to_wire()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.socket.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            with contextlib.suppress(Exception):
                self.socket.sendto(self._answer(wire), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close()

    def __enter__(self) -> DNSServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TestServers:
    """Starts servers on loopback addresses and stops them all on close()."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self._loop = _Loop()
        self._servers: list[asyncio.Server] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="keychest-tls-")
        self._files = 0
        self.hosts = LOOPBACKS if ipv6_available() else LOOPBACKS[:1]
        # Per port: connections open now, the most at once, and in all (TLS: after the handshake).
        self.connections: dict[int, dict[str, int]] = {}

    def server_context(self, chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
        self._files += 1
        chain_file = Path(self._tmp.name) / f"chain{self._files}.pem"
        key_file = Path(self._tmp.name) / f"key{self._files}.pem"
        chain_file.write_bytes(chain_pem)
        key_file.write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # Level 0, so SHA-1 and RSA-1024 test certificates load and can be served.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.load_cert_chain(chain_file, key_file)
        return context

    def _listen(self, handler: Any, hosts: Iterable[str] | None, port: int | None, **kwargs: Any) -> int:
        hosts = list(hosts or self.hosts)
        port = port or free_port(hosts)
        counts = self.connections.setdefault(port, {"now": 0, "max": 0, "total": 0})

        async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            counts["now"] += 1
            counts["total"] += 1
            counts["max"] = max(counts["max"], counts["now"])
            try:
                await handler(reader, writer)
            finally:
                counts["now"] -= 1

        async def start() -> None:
            for host in hosts:
                server = await asyncio.start_server(counted, host, port, reuse_address=True, **kwargs)
                self._servers.append(server)

        self._loop.call(start())
        return port

    def tls(
        self,
        chain_pem: bytes,
        key_pem: bytes,
        hosts: Iterable[str] | None = None,
        port: int | None = None,
        configure: Callable[[ssl.SSLContext], None] | None = None,
    ) -> int:
        """Serve `chain_pem` (leaf first, then what the server sends along) on a free port.

        `configure` may adjust the server's SSLContext (versions, SNI callback, ...) first.
        """
        context = self.server_context(chain_pem, key_pem)
        if configure is not None:
            configure(context)
        return self._listen(_hold_open, hosts, port, ssl=context, ssl_handshake_timeout=10)

    def tls_trustme(self, leaf: Any, hosts: Iterable[str] | None = None, port: int | None = None) -> int:
        """Serve a trustme.LeafCert with its intermediates."""
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return self.tls(chain, leaf.private_key_pem.bytes(), hosts, port)

    def hostile(self, behaviour: str, hosts: Iterable[str] | None = None) -> int:
        return self._listen(HOSTILE[behaviour], hosts, None)

    def close(self) -> None:
        async def close_all() -> None:
            for server in self._servers:
                server.close()
            for server in self._servers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)

        with contextlib.suppress(Exception):
            self._loop.call(close_all(), timeout=10)
        self._loop.stop()
        self._tmp.cleanup()

    def __enter__(self) -> TestServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
