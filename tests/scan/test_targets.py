from __future__ import annotations

import pytest

from keychest.scan.targets import Endpoint, ScanTarget, parse_endpoint, parse_target_lines


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("example.com", "example.com", 443),
        ("Example.COM.", "example.com", 443),
        ("example.com:8443", "example.com", 8443),
        ("[2001:db8::1]:8443", "2001:db8::1", 8443),
        ("[2001:db8::1]", "2001:db8::1", 443),
        ("2001:db8::1", "2001:db8::1", 443),
        ("::1", "::1", 443),
        ("192.0.2.7:636", "192.0.2.7", 636),
        ("https://example.com:8443/path?q", "example.com", 8443),
        ("example.com 993", "example.com", 993),
        ("bücher.example", "xn--bcher-kva.example", 443),
        ("_dmarc-ish.example", "_dmarc-ish.example", 443),
    ],
)
def test_parse_endpoint(text: str, host: str, port: int) -> None:
    assert parse_endpoint(text) == Endpoint(host, port)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "example.com:0",
        "example.com:65536",
        "example.com:http",
        "[::1",
        "[example.com]:443",
        "2001:db8::1:443:x",
        "-bad-.example",
        "a..b",
        "a b c",
        "*.example.com",
    ],
)
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_target_lines_skip_comments_and_report_line_numbers() -> None:
    lines = ["# watched hosts", "", "a.example", "b.example:8443  # staging", "c.example 465"]
    assert parse_target_lines(lines) == [
        Endpoint("a.example"),
        Endpoint("b.example", 8443),
        Endpoint("c.example", 465),
    ]
    with pytest.raises(ValueError, match="line 2"):
        parse_target_lines(["ok.example", "bad:port"])


def test_name_and_address_stay_apart() -> None:
    target = Endpoint("www.example", 443).at("2001:db8::5")
    assert target == ScanTarget("www.example", 443, "2001:db8::5")
    assert target.endpoint == Endpoint("www.example", 443)
    assert str(target) == "www.example:443 (2001:db8::5)"
    assert str(Endpoint("::1", 8443)) == "[::1]:8443"
