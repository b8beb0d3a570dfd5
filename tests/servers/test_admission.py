"""Who counts as one client for the line API's connection caps, and the caps' arithmetic."""

from __future__ import annotations

import pytest

from keychest.servers.line import OVERLOADED, OVERLOADED_BY_YOU, Admission, client_key


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb:cccc:dddd:eeee", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client of a dual-stack socket
        ("fe80::1%eth0", "fe80::/64"),
        (None, "-"),
    ],
)
def test_client_key(ip: str | None, key: str) -> None:
    assert client_key(ip) == key


def test_caps_per_client_and_in_total() -> None:
    admission = Admission(max_total=5, max_per_client=2)
    assert admission.admit("a") is None
    assert admission.admit("a") is None
    assert admission.admit("a") == OVERLOADED_BY_YOU
    assert [admission.admit(c) for c in ("b", "b", "c")] == [None, None, None]
    assert admission.admit("d") == OVERLOADED  # the total is reached: everyone waits
    admission.release("a")
    assert admission.admit("d") is None
    assert admission.total == 5 and admission.per_client == {"a": 1, "b": 2, "c": 1, "d": 1}
    for client in ("a", "b", "b", "c", "d"):
        admission.release(client)
    assert admission.total == 0 and admission.per_client == {}


def test_per_client_cap_zero_is_off() -> None:
    admission = Admission(max_total=100, max_per_client=0)
    assert all(admission.admit("a") is None for _ in range(100))
    assert admission.admit("a") == OVERLOADED
