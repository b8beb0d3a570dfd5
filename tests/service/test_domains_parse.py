"""Domain normalisation: what can be monitored, and clear reasons for what cannot."""

from __future__ import annotations

import pytest

from keychest.scan.targets import Endpoint, parse_endpoint
from keychest.service.domains import DomainName, parse_domain
from keychest.service.errors import ServiceError


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("WWW.Example.NET", "www.example.net", 443),
        ("www.example.net.", "www.example.net", 443),
        ("www.example.net:8443", "www.example.net", 8443),
        ("bücher.example", "xn--bcher-kva.example", 443),
        ("straße.example", "xn--strae-oqa.example", 443),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", 443),
        ("192.0.2.10", "192.0.2.10", 443),
        ("192.0.2.10:993", "192.0.2.10", 993),
        ("[2001:db8::1]:8443", "2001:db8::1", 8443),
        ("2001:DB8:0::1", "2001:db8::1", 443),
        ("intranet", "intranet", 443),
    ],
)
def test_normalises(text: str, host: str, port: int) -> None:
    assert parse_domain(text) == DomainName(host, port)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("*.example.net", "wildcards cannot be scanned"),
        ("https://www.example.net/", "not a URL"),
        ("a..example", "empty label"),
        ("x" * 64 + ".example", "longer than 63"),
        (".".join(["abcdefghi"] * 26), "longer than 253"),
        ("under_score.example", "bad characters"),
        ("-lead.example", "bad characters"),
        ("www.example.net:0", "invalid port"),
        ("www.example.net:70000", "invalid port"),
        ("www.example.net:https", "invalid port"),
        ("[2001:db8::1", "unclosed"),
        ("1.2.3", "all digits"),
        ("xn--zz.example", "invalid IDNA"),
    ],
)
def test_refuses_with_reason(text: str, reason: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_domain(text)
    assert caught.value.code == 422
    assert reason in caught.value.text


def test_display_form_round_trips() -> None:
    for text in ["www.example.net", "www.example.net:8443", "[2001:db8::1]:8443", "192.0.2.1"]:
        assert str(parse_domain(text)) == text


@pytest.mark.parametrize(
    "text",
    ["straße.example", "Bücher.example:8443", "WWW.Example.NET.", "[2001:DB8::1]:993", "intranet"],
)
def test_registration_and_scan_agree(text: str) -> None:
    # One parser: what `command add` registers is what `keychest scan` checks.
    assert DomainName is Endpoint
    assert parse_domain(text) == parse_endpoint(text) == parse_endpoint(text, strict=True)


def test_underscore_is_refused_for_registration_but_scanned_on_request() -> None:
    with pytest.raises(ServiceError) as caught:
        parse_domain("under_score.example")
    assert caught.value.code == 422 and "bad characters" in caught.value.text
    assert parse_endpoint("under_score.example") == Endpoint("under_score.example")
