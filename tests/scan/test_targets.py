from __future__ import annotations

import pytest

from keychest.scan.targets import Endpoint, ScanTarget, TargetError, parse_endpoint, parse_target_lines


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


@pytest.mark.parametrize(
    ("text", "host"),
    [
        # UTS 46 (non-transitional): ß stays ß, so straße is not strasse (IDNA 2003 said it was).
        ("straße.example", "xn--strae-oqa.example"),
        ("STRASSE.example", "strasse.example"),
        ("Bücher.Example", "xn--bcher-kva.example"),
        ("bücher\u3002example", "xn--bcher-kva.example"),  # ideographic full stop is a dot
        ("faß.de.", "xn--fa-hia.de"),
    ],
)
def test_uts46_in_both_modes(text: str, host: str) -> None:
    assert parse_endpoint(text) == Endpoint(host)
    assert parse_endpoint(text, strict=True) == Endpoint(host)


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("under_score.example", Endpoint("under_score.example")),
        ("https://Shop.Example.net:8443/path?q#f", Endpoint("shop.example.net", 8443)),
        ("HTTPS://shop.example.net", Endpoint("shop.example.net")),
        ("shop.example.net 993", Endpoint("shop.example.net", 993)),
        ("[2001:db8::1] 8443", Endpoint("2001:db8::1", 8443)),
    ],
)
def test_lenient_accepts_what_strict_refuses(text: str, endpoint: Endpoint) -> None:
    assert parse_endpoint(text) == endpoint
    with pytest.raises(TargetError):
        parse_endpoint(text, strict=True)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("under_score.example", "bad characters"),
        ("https://www.example.net/", "not a URL"),
        ("www.example.net 443", "spaces"),
        ("*.example.net", "wildcards cannot be scanned"),
        ("[www.example.net]:443", "only an IPv6 address"),
        ("127.1", "all digits"),
        ("0x7f000001", "legacy form"),
        ("ftp://example.net/pub", "takes no path"),
        ("gopher://example.net", "known are https, smtps"),
    ],
)
def test_strict_refuses_with_reason(text: str, reason: str) -> None:
    with pytest.raises(TargetError, match=reason):
        parse_endpoint(text, strict=True)


@pytest.mark.parametrize("text", ["127.1", "0x7f.0.0.1", "2130706433", "0x7f000001"])
def test_legacy_ipv4_forms_are_no_names_in_either_mode(text: str) -> None:
    # getaddrinfo would connect to 127.0.0.1 for each of these.
    with pytest.raises(TargetError):
        parse_endpoint(text)


def test_display_form_leaves_out_443_but_tables_keep_it() -> None:
    assert str(Endpoint("www.example", 443)) == "www.example"
    assert str(Endpoint("2001:db8::1", 443)) == "[2001:db8::1]"
    assert str(Endpoint("www.example", 8443)) == "www.example:8443"
    assert Endpoint("www.example", 443).host_port == "www.example:443"
