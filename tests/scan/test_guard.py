from __future__ import annotations

import pytest

from keychest.scan.guard import blocked_message, blocked_reason, check_address


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata endpoints live here
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("100.64.0.1", "non-public"),
        # Found by the attack run (issue 10 item 6): each of these reaches an internal address.
        ("64:ff9b::7f00:1", "loopback address (127.0.0.1 embedded as NAT64)"),
        ("64:ff9b::a00:1", "private address (10.0.0.0/8) (10.0.0.1 embedded as NAT64)"),
        ("64:ff9b:1::8.8.8.8", "local-use NAT64"),
        ("64:ff9b:1:ffff::1", "local-use NAT64"),
        ("::127.0.0.1", "loopback address (127.0.0.1 embedded as IPv4-compatible)"),
        ("::10.0.0.1", "IPv4-compatible"),
        ("::ffff:0:127.0.0.1", "loopback address (127.0.0.1 embedded as IPv4-translated)"),
        ("::ffff:0:c0a8:101", "IPv4-translated"),
        ("fec0::1", "site-local"),
        ("192.0.0.1", "IETF protocol assignments"),
        ("192.0.0.9", "IETF protocol assignments"),
        ("192.0.0.170", "IETF protocol assignments"),
        ("2002:7f00:1::1", "loopback address (127.0.0.1 embedded as 6to4)"),
        ("2002:c0a8:101::1", "6to4"),
        # Teredo: server 8.8.8.8, client obfuscated 127.0.0.1 (bits inverted: 80ff:fffe).
        ("2001:0:808:808::80ff:fffe", "127.0.0.1 embedded as Teredo client"),
        ("2001:db8:1::5efe:7f00:1", "ISATAP"),
        ("2001:470:1::200:5efe:a00:1", "ISATAP"),
        # The rest of what is not globally routable.
        ("100.127.255.255", "carrier-grade NAT"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.1", "documentation"),
        ("0.1.2.3", "this network"),
        ("192.88.99.1", "6to4 relay"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001:2::1", "IETF protocol assignments"),
        ("100::1", "discard"),
        ("4000::1", "not global unicast"),
        ("5f00::1", "not global unicast"),
    ],
)
def test_internal_addresses_are_refused(ip: str, reason: str) -> None:
    found = blocked_reason(ip)
    assert found is not None and reason in found, found
    assert check_address(ip, allow_private_targets=True) is None


@pytest.mark.parametrize(
    "ip",
    [
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",
        "100.128.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "192.0.1.255",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",  # NAT64 to a public address: how IPv6-only networks reach IPv4
        "2002:808:808::1",  # 6to4 of a public address
        "2001:0:808:808::f7f7:f7f7",  # Teredo with public server and client (8.8.8.8)
        "2001:4:112::1",  # AS112, globally reachable although inside 2001::/23
        "2a00:1450:4001:82b::200e",
    ],
)
def test_public_addresses_pass(ip: str) -> None:
    assert blocked_reason(ip) is None
    assert check_address(ip, allow_private_targets=False) is None


def test_message_names_the_flag() -> None:
    reason = blocked_reason("10.0.0.1")
    assert reason is not None
    message = blocked_message("10.0.0.1", reason)
    assert message.startswith("refusing to scan 10.0.0.1: private address")
    assert "--allow-private-targets" in message
