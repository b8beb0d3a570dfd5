"""Endpoints (name + port) and scan targets (name + port + address), and their parsing.

A hostname and an address are kept apart on purpose: the name is what the certificate
must match and what goes into SNI, the address is what we connect to (and what the
private-address guard judges). Mixing them up is how scanners end up re-resolving a name
between the guard check and the connect.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_PORT = 443

# Letters, digits, hyphens and underscores (seen in real internal names), dot-separated;
# a leading "*." is not accepted: a wildcard is something a certificate has, not a host.
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _normalise_host(host: str) -> str:
    host = host.strip()
    if not host:
        raise ValueError("empty host name")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    host = host.rstrip(".").lower()
    if not host.isascii():
        # Certificates carry A-labels, so compare and send SNI in that form.
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"invalid international host name {host!r}") from exc
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        raise ValueError(f"invalid host name {host!r}")
    return host


@functools.lru_cache(maxsize=65536)
def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `text` spells, or None if it is a name. Cached: the same addresses come
    up at every step of a scan (resolve, guard, connect, name check)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_ip_literal(host: str) -> bool:
    return parse_ip(host) is not None


def format_host_port(host: str, port: int) -> str:
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A name (or address literal) and a TCP port: what a user asks us to watch."""

    host: str
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)

    def at(self, ip: str) -> ScanTarget:
        return ScanTarget(self.host, self.port, ip)


@dataclass(frozen=True, slots=True)
class ScanTarget:
    """One address of an endpoint: connect to `ip`, but judge the certificate against `host`."""

    host: str
    port: int
    ip: str

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    def __str__(self) -> str:
        where = format_host_port(self.ip, self.port)
        return where if self.host == self.ip else f"{format_host_port(self.host, self.port)} ({self.ip})"


def _parse_port(text: str, original: str) -> int:
    if not text.isdigit():
        raise ValueError(f"invalid port in {original!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range in {original!r}")
    return port


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT) -> Endpoint:
    """Parse `host`, `host:port`, `[v6]`, `[v6]:port`, a bare IPv6 address, or an https:// URL.

    ssl-cert-check's file format (`host port`, whitespace separated) is accepted as well,
    so existing lists can be reused as they are.
    """
    original = text
    text = text.strip()
    if text.lower().startswith("https://"):
        text = text[len("https://") :].split("/", 1)[0]
    parts = text.split()
    if len(parts) == 2:
        return Endpoint(_normalise_host(parts[0].strip("[]")), _parse_port(parts[1], original))
    if len(parts) != 1:
        raise ValueError(f"cannot parse target {original!r}")
    text = parts[0]
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"missing ']' in {original!r}")
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"not an IPv6 address in brackets: {original!r}") from exc
        if not rest:
            return Endpoint(_normalise_host(host), default_port)
        if not rest.startswith(":"):
            raise ValueError(f"unexpected text after ']' in {original!r}")
        return Endpoint(_normalise_host(host), _parse_port(rest[1:], original))
    if text.count(":") > 1:
        # More than one colon and no brackets: only a bare IPv6 address makes sense.
        try:
            return Endpoint(str(ipaddress.IPv6Address(text)), default_port)
        except ValueError as exc:
            raise ValueError(f"IPv6 address with a port must be written [addr]:port: {original!r}") from exc
    if ":" in text:
        host, port = text.rsplit(":", 1)
        return Endpoint(_normalise_host(host), _parse_port(port, original))
    return Endpoint(_normalise_host(text), default_port)


def parse_target_lines(lines: Iterable[str], default_port: int = DEFAULT_PORT) -> list[Endpoint]:
    """Parse a targets file: one target per line; blank lines and `#` comments are skipped."""
    endpoints = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            endpoints.append(parse_endpoint(line, default_port))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    return endpoints
