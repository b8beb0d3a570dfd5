"""Pure rules behind REST's KeyChest compatibility: its input forms and the chosen-key bar."""

from __future__ import annotations

import base64
import secrets
import string
import uuid

import pytest

from keychest.service import compat, domains, keystrength
from keychest.service.errors import ServiceError
from keychest.service.keys import generate_key


@pytest.mark.parametrize(
    ("given", "text", "changed"),
    [
        ("www.example.net", "www.example.net", []),
        ("https://Shop.Example.net/path", "shop.example.net", ["https://", "path /path"]),
        ("http://shop.example.net", "shop.example.net", ["http://"]),
        ("https://shop.example.net:8443/a?b#c", "shop.example.net:8443", ["https://", "path /a?b#c"]),
        ("https://user@shop.example.net/", "shop.example.net", ["https://", "user name"]),
        ("https://[2001:db8::1]:8443/", "[2001:db8::1]:8443", ["https://"]),
        ("*.wild.example.net", "wild.example.net", ["wildcard"]),
        ("https://*.wild.example.net/x", "wild.example.net", ["https://", "path /x", "wildcard"]),
        ("shop.example.net/path", "shop.example.net", ["path /path"]),
        ("  shop.example.net \n", "shop.example.net", []),
    ],
)
def test_user_domain(given: str, text: str, changed: list[str]) -> None:
    result = compat.user_domain(given)
    assert result.text == text
    assert len(result.changes) == len(changed)
    for change, word in zip(result.changes, changed, strict=True):
        assert word in change


@pytest.mark.parametrize(
    "given", ["gopher://files.example.net/", "smtp://mail.example.net/x", "https://x:99999/"]
)
def test_user_domain_refuses_unknown_schemes_and_bad_urls(given: str) -> None:
    with pytest.raises(ServiceError) as refused:
        domains.parse_domain(compat.user_domain(given).text)
    assert refused.value.code == 422


def test_certificate_pem_wraps_base64_der_only() -> None:
    der = b"\x30\x82\x01\x00" + secrets.token_bytes(256)
    b64 = base64.b64encode(der).decode()
    pem, converted = compat.certificate_pem(b64[:50] + "\n" + b64[50:])
    assert converted and pem.startswith("-----BEGIN CERTIFICATE-----\n")
    assert base64.b64decode("".join(pem.splitlines()[1:-1])) == der
    assert max(len(line) for line in pem.splitlines()) == 64
    for untouched in ("-----BEGIN CERTIFICATE-----\nxyz\n", "hello", base64.b64encode(b"not der").decode()):
        assert compat.certificate_pem(untouched) == (untouched, False)


def test_generated_and_random_keys_clear_the_bar() -> None:
    # The bar must not refuse what is random: 10,000 of each kind, none below.
    assert min(keystrength.estimated_bits(generate_key()) for _ in range(10_000)) == 160
    assert min(keystrength.estimated_bits(str(uuid.uuid4())) for _ in range(10_000)) >= keystrength.MIN_BITS
    # 25 characters, not 22: about one in 10^5 random 22-character keys happens to be all one
    # case, which the estimator (rightly) values at 5.17 bits a character: 114 < 128.
    alphabet = string.ascii_letters + string.digits
    randoms = ("".join(secrets.choice(alphabet) for _ in range(25)) for _ in range(10_000))
    assert min(keystrength.estimated_bits(k) for k in randoms) >= keystrength.MIN_BITS


@pytest.mark.parametrize(
    "weak",
    [
        "aaaaaaaaaaaaaaaa",
        "a" * 64,
        "abababababababababababababababab",
        "0123456789abcdef0123456789abcdef",
        "abcdefghijklmnopqrstuvwxyz012345",
        "my-api-key-for-server-1",
        "5b9b6aceb95011e7",  # half a UUID: 64 bits
        "zyxwvutsrqponmlk-7f3a9c2e5b81d4f6",
    ],
)
def test_weak_keys_are_refused(weak: str) -> None:
    assert keystrength.estimated_bits(weak) < keystrength.MIN_BITS
    with pytest.raises(ServiceError) as refused:
        keystrength.require_strong(weak)
    assert refused.value.code == 422 and "too easy to guess" in refused.value.text
