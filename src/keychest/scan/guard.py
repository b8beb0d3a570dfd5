"""The private-address guard.

A monitoring service that scans whatever names its users add is a server-side request
forgery tool unless it refuses internal addresses. The guard is applied to the address we
are about to connect to (never to a name that could resolve differently a moment later).
"""

from __future__ import annotations

import ipaddress

from keychest.scan.targets import parse_ip


def blocked_reason(ip: str) -> str | None:
    """Why `ip` must not be scanned unless private targets are allowed, or None if it may be."""
    address = parse_ip(ip)
    if address is None:
        raise ValueError(f"not an IP address: {ip!r}")
    if isinstance(address, ipaddress.IPv6Address):
        # ::ffff:127.0.0.1 reaches 127.0.0.1; judge the IPv4 address it really is.
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            reason = blocked_reason(str(mapped))
            return f"{reason} (embedded in {ip})" if reason else None
    if address.is_loopback:
        return "loopback address"
    if address.is_unspecified:
        # Connecting to 0.0.0.0 or :: reaches the local host on most systems.
        return "unspecified address"
    if address.is_link_local:
        return "link-local address"
    if address.is_multicast:
        return "multicast address"
    if address.is_private:
        return "private address"
    if not address.is_global:
        # Shared (carrier-grade NAT), reserved and documentation ranges: not the public internet.
        return "non-public address"
    return None


def check_address(ip: str, allow_private_targets: bool) -> str | None:
    if allow_private_targets:
        return None
    return blocked_reason(ip)
