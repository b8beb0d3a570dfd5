"""The private-address guard.

A monitoring service that scans whatever names its users add is a server-side request
forgery tool unless it refuses internal addresses. The guard is applied to the address we
are about to connect to (never to a name that could resolve differently a moment later).

Only globally routable unicast addresses pass. The tables below are IANA's special-purpose
registries written out, rather than `ipaddress.is_global`, whose answer changes between
Python releases. An IPv6 address that carries an IPv4 address (mapped, compatible,
translated, NAT64, 6to4, Teredo, ISATAP) is judged by the IPv4 address it reaches: a
translator or the host's own stack would deliver `64:ff9b::7f00:1` to 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from keychest.scan.targets import parse_ip

ALLOW_FLAG = "--allow-private-targets"


def _v4(table: list[tuple[str, str]]) -> list[tuple[IPv4Network, str]]:
    return [(IPv4Network(net), reason) for net, reason in table]


def _v6(table: list[tuple[str, str]]) -> list[tuple[IPv6Network, str]]:
    return [(IPv6Network(net), reason) for net, reason in table]


# Not globally reachable (RFC 6890 and its updates), most specific reason first.
_IPV4_REFUSED = _v4(
    [
        ("0.0.0.0/32", "unspecified address"),
        ("0.0.0.0/8", 'non-public address ("this network", 0.0.0.0/8)'),
        ("10.0.0.0/8", "private address (10.0.0.0/8)"),
        ("100.64.0.0/10", "non-public address (carrier-grade NAT shared space, 100.64.0.0/10)"),
        ("127.0.0.0/8", "loopback address"),
        ("169.254.0.0/16", "link-local address (169.254.0.0/16, where cloud metadata services live)"),
        ("172.16.0.0/12", "private address (172.16.0.0/12)"),
        ("192.0.0.0/24", "non-public address (IETF protocol assignments, 192.0.0.0/24)"),
        ("192.0.2.0/24", "non-public address (documentation, 192.0.2.0/24)"),
        ("192.88.99.0/24", "non-public address (deprecated 6to4 relay anycast, 192.88.99.0/24)"),
        ("192.168.0.0/16", "private address (192.168.0.0/16)"),
        ("198.18.0.0/15", "non-public address (benchmarking, 198.18.0.0/15)"),
        ("198.51.100.0/24", "non-public address (documentation, 198.51.100.0/24)"),
        ("203.0.113.0/24", "non-public address (documentation, 203.0.113.0/24)"),
        ("224.0.0.0/4", "multicast address"),
        ("255.255.255.255/32", "broadcast address"),
        ("240.0.0.0/4", "non-public address (reserved, 240.0.0.0/4)"),
    ]
)

# Inside 2000::/3 (global unicast): the special-purpose blocks that are not reachable.
_IPV6_GLOBAL_EXCEPTIONS = _v6(
    [
        ("2001:db8::/32", "non-public address (documentation, 2001:db8::/32)"),
        ("3fff::/20", "non-public address (documentation, 3fff::/20)"),
    ]
)
# 2001::/23 (IETF protocol assignments) is refused except for these globally reachable parts.
_IETF_BLOCK = IPv6Network("2001::/23")
_IETF_REACHABLE = _v6(
    [
        ("2001:1::1/128", "PCP anycast"),
        ("2001:1::2/128", "TURN anycast"),
        ("2001:1::3/128", "DNS-SD SRP anycast"),
        ("2001:3::/32", "AMT"),
        ("2001:4:112::/48", "AS112"),
        ("2001:20::/28", "ORCHIDv2"),
        ("2001:30::/28", "DRIP"),
    ]
)
# Outside 2000::/3 nothing is global unicast; these get a more telling reason.
_IPV6_OUTSIDE = _v6(
    [
        ("::1/128", "loopback address"),
        ("::/128", "unspecified address"),
        ("64:ff9b:1::/48", "non-public address (local-use NAT64 prefix, 64:ff9b:1::/48)"),
        ("100::/64", "non-public address (discard-only, 100::/64)"),
        ("fc00::/7", "private address (unique local, fc00::/7)"),
        ("fe80::/10", "link-local address"),
        ("fec0::/10", "non-public address (site-local, fec0::/10)"),
        ("ff00::/8", "multicast address"),
    ]
)
_GLOBAL_UNICAST = IPv6Network("2000::/3")
# Forms whose low 32 bits are the IPv4 address the packets end up at.
_LOW_32_EMBEDDING = _v6(
    [
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("64:ff9b::/96", "NAT64"),
        ("::/96", "IPv4-compatible"),
    ]
)
_TEREDO = IPv6Network("2001::/32")
_SIXTOFOUR = IPv6Network("2002::/16")


def embedded_ipv4(address: IPv6Address) -> list[tuple[IPv4Address, str]]:
    """The IPv4 addresses an IPv6 address leads to, each with the name of its form."""
    for network, form in _LOW_32_EMBEDDING:
        if address in network:
            return [(IPv4Address(int(address) & 0xFFFFFFFF), form)]
    if address in _SIXTOFOUR:
        assert address.sixtofour is not None
        return [(address.sixtofour, "6to4")]
    if address in _TEREDO:
        assert address.teredo is not None
        server, client = address.teredo
        return [(server, "Teredo server"), (client, "Teredo client")]
    # ISATAP puts the IPv4 address in the interface identifier (::0:5efe:a.b.c.d, with the
    # universal/local bit either way) behind any prefix.
    if (int(address) >> 32) & 0xFDFFFFFF == 0x00005EFE:
        return [(IPv4Address(int(address) & 0xFFFFFFFF), "ISATAP")]
    return []


def _ipv4_reason(address: IPv4Address) -> str | None:
    for network, reason in _IPV4_REFUSED:
        if address in network:
            return reason
    if not address.is_global:
        # Whatever a newer registry added that the table above does not list yet.
        return "non-public address"
    return None


def _ipv6_reason(address: IPv6Address) -> str | None:
    if address == IPv6Address("::1"):
        return "loopback address"
    if address == IPv6Address("::"):
        return "unspecified address"
    for inner, form in embedded_ipv4(address):
        reason = _ipv4_reason(inner)
        if reason is not None:
            return f"{reason} ({inner} embedded as {form})"
    for network, reason in _IPV6_OUTSIDE:
        if address in network:
            return reason
    if any(address in network for network, _ in _LOW_32_EMBEDDING):
        return None  # the IPv4 address it leads to was judged above and is public
    if address not in _GLOBAL_UNICAST:
        return "non-public address (not global unicast, outside 2000::/3)"
    for network, reason in _IPV6_GLOBAL_EXCEPTIONS:
        if address in network:
            return reason
    reachable = any(address in network for network, _ in _IETF_REACHABLE)
    if address in _IETF_BLOCK and address not in _TEREDO and not reachable:
        return "non-public address (IETF protocol assignments, 2001::/23)"
    return None


def blocked_reason(ip: str) -> str | None:
    """Why `ip` must not be scanned unless private targets are allowed, or None if it may be."""
    address = parse_ip(ip)
    if address is None:
        raise ValueError(f"not an IP address: {ip!r}")
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "link-local address (with a zone)"
        return _ipv6_reason(address)
    return _ipv4_reason(address)


def blocked_message(ip: str, reason: str) -> str:
    """The one text a blocked scan shows, wherever it is shown (scan, line API, REST, dashboard)."""
    return (
        f"refusing to scan {ip}: {reason}; internal addresses are scanned only when the scanner "
        f"runs with {ALLOW_FLAG} (keychest serve {ALLOW_FLAG}, keychest scan {ALLOW_FLAG})"
    )


def check_address(ip: str, allow_private_targets: bool) -> str | None:
    if allow_private_targets:
        return None
    return blocked_reason(ip)
