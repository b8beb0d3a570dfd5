"""Endpoints (name + port) and scan targets (name + port + address), and the one parser of
`host[:port]` that every front door uses.

A hostname and an address are kept apart on purpose: the name is what the certificate
must match and what goes into SNI, the address is what we connect to (and what the
private-address guard judges). Mixing them up is how scanners end up re-resolving a name
between the guard check and the connect.

`parse_endpoint` has two modes over one set of rules, so that a name means the same host
everywhere (UTS 46 mapping to A-labels, as browsers and certificate authorities do):

- strict (registration: `command add`, REST, dashboard): `host`, `host:port`, `[v6]:port`,
  a bare IPv6 address; labels are letters, digits and inner hyphens (RFC 1123), since a
  name a certificate authority cannot issue for is a typo, not something to watch.
- both: `scheme://host[:port]` for the protocols of `scan.protocols` other than https
  (STARTTLS or implicit TLS, each with its default port; no path).
- lenient (`keychest scan`, target files): the above, plus an `https://` URL (path
  dropped), ssl-cert-check's `host port` lines, and
  underscores in labels (real internal names have them, and a one-off scan may look at
  whatever the user points it at).

An unknown scheme is refused in both modes with the list of known ones.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import idna

from keychest.scan.protocols import DEFAULT_PROTOCOL, SCHEMES, known_schemes

DEFAULT_PORT = 443

_STRICT_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_LENIENT_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
# Cheap test that a host is surely a name, so most hosts skip ipaddress' exception.
_NOT_AN_ADDRESS = re.compile(r"[g-z_-]|[a-f].*\.|\..*[a-f]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class TargetError(ValueError):
    """Why a `host[:port]` text is not an endpoint; the message is meant for the user."""


def _ip_literal(host: str) -> str | None:
    if ":" not in host and _NOT_AN_ADDRESS.search(host.lower()):
        return None
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        if ":" in host:
            raise TargetError(
                "invalid IPv6 address (with a port, an IPv6 address is written [addr]:port)"
            ) from None
        return None


def _legacy_ipv4(host: str) -> bool:
    """True for the forms inet_aton reads as an address but ipaddress does not (`127.1`,
    `0x7f.0.0.1`, `2130706433`): a resolver would connect to that address, so it is not a
    name, and accepting it would only hide the address from whoever reads the list."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _normalise_name(host: str, strict: bool) -> str:
    if not host.isascii():
        try:
            # UTS 46 (non-transitional): case folding, full-width dots, ß kept as ß.
            host = idna.uts46_remap(host, std3_rules=False, transitional=False)
        except idna.IDNAError as exc:
            raise TargetError(f"not a valid internationalised domain name: {exc}") from None
    else:
        host = host.lower()
    # One trailing dot is the DNS root; a second would leave an empty label, refused below.
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise TargetError("empty domain")
    if host.startswith("*."):
        raise TargetError(
            "wildcards cannot be scanned: register each name your servers answer to (e.g. www."
            + host[2:]
            + ")"
        )
    pattern = _STRICT_LABEL if strict else _LENIENT_LABEL
    labels = host.split(".")
    for index, label in enumerate(labels):
        if not label:
            raise TargetError("empty label in domain (two dots in a row?)")
        if not label.isascii():
            try:
                label = labels[index] = idna.alabel(label).decode("ascii")
            except idna.IDNAError as exc:
                raise TargetError(f"not a valid internationalised domain name: {exc}") from None
        if len(label) > 63:
            raise TargetError(f"label longer than 63 characters: {label[:20]}...")
        if not pattern.fullmatch(label):
            allowed = "a-z, 0-9 and inner hyphens" if strict else "a-z, 0-9, _ and inner hyphens"
            raise TargetError(f"bad characters in {label!r}: a label is {allowed}")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise TargetError(f"invalid IDNA label {label}") from None
    host = ".".join(labels)
    if len(host) > 253:
        raise TargetError("domain longer than 253 characters")
    if labels[-1].isdigit():
        raise TargetError("the last label is all digits: not a domain (and not an IP address)")
    if _legacy_ipv4(host):
        raise TargetError(f"{host!r} is an IPv4 address in a legacy form: write it as a.b.c.d")
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
    """A name (or address literal), a TCP port and the protocol spoken there (`https`:
    TLS at once; `smtp`, `imap`...: STARTTLS first): what a user asks us to watch."""

    host: str
    port: int = DEFAULT_PORT
    protocol: str = DEFAULT_PROTOCOL

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if self.protocol not in SCHEMES:
            raise ValueError(f"unknown protocol {self.protocol!r}")

    def __str__(self) -> str:
        """The display form users type and see everywhere: the protocol's default port left
        out, IPv6 in brackets, `scheme://` for every protocol but https."""
        if self.protocol != DEFAULT_PROTOCOL:
            if self.port == SCHEMES[self.protocol].port:
                host = f"[{self.host}]" if ":" in self.host else self.host
                return f"{self.protocol}://{host}"
            return f"{self.protocol}://{format_host_port(self.host, self.port)}"
        if self.port == DEFAULT_PORT:
            return f"[{self.host}]" if ":" in self.host else self.host
        return format_host_port(self.host, self.port)

    @property
    def host_port(self) -> str:
        """Always with the port (`host:443`): for tables and logs that line up."""
        return format_host_port(self.host, self.port)

    def at(self, ip: str) -> ScanTarget:
        return ScanTarget(self.host, self.port, ip, self.protocol)


@dataclass(frozen=True, slots=True)
class ScanTarget:
    """One address of an endpoint: connect to `ip`, but judge the certificate against `host`."""

    host: str
    port: int
    ip: str
    protocol: str = DEFAULT_PROTOCOL

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.protocol)

    def __str__(self) -> str:
        where = format_host_port(self.ip, self.port)
        return where if self.host == self.ip else f"{format_host_port(self.host, self.port)} ({self.ip})"


def _parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise TargetError(f"invalid port {text[:10]!r}: 1 to 65535")
    return int(text)


def _split_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise TargetError("unclosed [ in IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise TargetError("only an IPv6 address goes in [brackets]") from None
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise TargetError("expected :port after ]")
        return host, _parse_port(rest[1:])
    if text.count(":") > 1:
        return text, default_port  # a bare IPv6 literal (checked as one by the caller)
    host, sep, port = text.partition(":")
    return host, _parse_port(port) if sep else default_port


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT, *, strict: bool = False) -> Endpoint:
    """Normalise what a user typed into an Endpoint, or raise TargetError saying why not.

    Names come out lower-cased, without the trailing dot, as A-labels (UTS 46); addresses
    in their compressed form. See the module docstring for what each mode accepts.
    """
    text = text.strip()
    if not text:
        raise TargetError("empty domain")
    scheme = _SCHEME.match(text)
    if scheme is not None:
        name = scheme.group(1).lower()
        if name not in SCHEMES:
            raise TargetError(f"unknown scheme {name[:20]!r}: known are {known_schemes()}")
        if name != DEFAULT_PROTOCOL:
            rest = text[scheme.end() :]
            rest = rest[:-1] if rest.endswith("/") else rest
            if any(ch in rest for ch in "/?#"):
                raise TargetError(f"{name}://host[:port] takes no path")
            if not rest or any(ch.isspace() for ch in rest):
                raise TargetError(f"expected {name}://host[:port]")
            host, port = _split_port(rest, SCHEMES[name].port)
            return Endpoint(_normalise_host(host, strict), port, name)
    if not strict:
        if text[:8].lower() == "https://":
            text = text[8:].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        parts = text.split()
        if len(parts) == 2:
            # ssl-cert-check's `host port`.
            host = parts[0][1:-1] if parts[0].startswith("[") and parts[0].endswith("]") else parts[0]
            return Endpoint(_normalise_host(host, strict), _parse_port(parts[1]))
        if len(parts) != 1:
            raise TargetError("cannot parse target: expected host[:port] or `host port`")
    if "://" in text or "/" in text:
        raise TargetError("give a domain name, not a URL (www.example.net or www.example.net:8443)")
    if any(ch.isspace() for ch in text):
        raise TargetError("spaces in domain: expected host[:port]")
    host, port = _split_port(text, default_port)
    return Endpoint(_normalise_host(host, strict), port)


def _normalise_host(host: str, strict: bool) -> str:
    literal = _ip_literal(host)
    if literal is not None:
        return literal
    return _normalise_name(host, strict)


def parse_resolve(text: str) -> tuple[str, int, str]:
    """curl's `--resolve HOST:PORT:ADDRESS` (the address may be in [brackets]): the name as
    every target's name is normalised, so it meets the endpoint it is meant for."""
    host, sep, rest = text.partition(":")
    port_text, sep2, address = rest.partition(":")
    if not sep or not sep2 or not host or not address:
        raise TargetError("expected HOST:PORT:ADDRESS, e.g. www.example.net:443:192.0.2.10")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    ip = parse_ip(address)
    if ip is None:
        raise TargetError(f"not an IP address: {address[:50]!r}")
    return _normalise_host(host, False), _parse_port(port_text), ip.compressed


def parse_target_lines(lines: Iterable[str], default_port: int = DEFAULT_PORT) -> list[Endpoint]:
    """Parse a targets file (lenient): one target per line; blank lines and `#` comments are skipped."""
    endpoints = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            endpoints.append(parse_endpoint(line, default_port))
        except ValueError as exc:
            raise TargetError(f"line {number}: {exc}") from None
    return endpoints
