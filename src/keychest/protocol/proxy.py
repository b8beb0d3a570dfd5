"""The PROXY protocol (HAProxy's, versions 1 and 2) as pure functions: bytes in, addresses out.

A TCP load balancer (HAProxy ``send-proxy``/``send-proxy-v2``, nginx ``proxy_protocol on``)
puts one header in front of the client's bytes naming the client's address; without it every
client is the balancer, and per-address quotas become fleet-wide. Nothing here does I/O: the
line server feeds the first bytes of a connection to :func:`parse` and goes on with the rest.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# A v1 header is at most 107 bytes with its CRLF.
V1_MAX = 107
# v2 may carry TLVs (HAProxy: unique id, SSL facts); more than this is no balancer of ours.
V2_MAX = 16 + 4096

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyError(Exception):
    """The bytes are not a valid PROXY header; the text says why (one line)."""


@dataclass(frozen=True)
class ProxyHeader:
    # The client's address and port; None for a LOCAL (v2) or UNKNOWN (v1) header, which the
    # balancer sends for its own health checks: the connection then is the balancer's.
    source: str | None
    source_port: int | None
    length: int  # bytes of the header: what follows is the client's


def starts_like_header(data: bytes) -> bool:
    """Whether ``data`` begins (as far as it goes) like a PROXY header of either version."""
    if not data:
        return False
    return V1_PREFIX.startswith(data[:6]) or V2_SIGNATURE.startswith(data[:12])


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None while more bytes are needed.

    Raises ProxyError when ``data`` cannot begin a valid header.
    """
    if data[:12] == V2_SIGNATURE[: len(data[:12])] and data[:1] == b"\r":
        return _parse_v2(data) if len(data) >= 12 else None
    if data[:6] == V1_PREFIX[: len(data[:6])]:
        return _parse_v1(data) if len(data) >= 6 else None
    raise ProxyError("expected a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyError("PROXY v1 header too long")
        return None
    try:
        words = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 header is not ASCII") from None
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader(None, None, end + 2)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyError("PROXY v1 header: expected PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    _, family, source, destination, source_port, destination_port = words
    version = 4 if family == "TCP4" else 6
    for text in (source, destination):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ProxyError(f"PROXY v1 header: bad address {text!r}") from None
        if address.version != version:
            raise ProxyError(f"PROXY v1 header: {text} is not {family}")
    ports = []
    for text in (source_port, destination_port):
        if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
            raise ProxyError(f"PROXY v1 header: bad port {text!r}")
        ports.append(int(text))
    return ProxyHeader(str(ipaddress.ip_address(source)), ports[0], end + 2)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyError("expected a PROXY protocol header")
    version_command, family, length = data[12], data[13], int.from_bytes(data[14:16], "big")
    if version_command >> 4 != 2:
        raise ProxyError("PROXY v2 header: unknown version")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyError("PROXY v2 header: unknown command")
    total = 16 + length
    if total > V2_MAX:
        raise ProxyError("PROXY v2 header too long")
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the balancer's own connection (health check)
        return ProxyHeader(None, None, total)
    body = data[16:total]
    if family == 0x11:  # TCP over IPv4
        if length < 12:
            raise ProxyError("PROXY v2 header: short IPv4 addresses")
        source = str(ipaddress.IPv4Address(body[0:4]))
        port = int.from_bytes(body[8:10], "big")
    elif family == 0x21:  # TCP over IPv6
        if length < 36:
            raise ProxyError("PROXY v2 header: short IPv6 addresses")
        source = str(ipaddress.IPv6Address(body[0:16]))
        port = int.from_bytes(body[32:34], "big")
    elif family == 0x00:  # UNSPEC: addresses unknown
        return ProxyHeader(None, None, total)
    else:
        raise ProxyError("PROXY v2 header: only TCP over IPv4 or IPv6")
    return ProxyHeader(source, port, total)


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """``--trusted-proxies`` CIDRs (a bare address is a /32 or /128). Raises ValueError."""
    return tuple(ipaddress.ip_network(text.strip(), strict=False) for text in texts if text.strip())


def is_trusted(ip: str | None, networks: tuple[Network, ...]) -> bool:
    if ip is None or not networks:
        return False
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == n.version and address in n for n in networks)
