"""Registering `scheme://host[:port]` (line API, REST, dashboard all go through domains.add):
the endpoint keeps its protocol, the scheduler's lease hands it to the scanner, unknown
schemes are refused (422) with the known ones, and REST's https:// compatibility holds."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from keychest.service import compat, domains, keys, scans
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest
from keychest.store.models import Endpoint as EndpointRow

from .test_scans import svc  # noqa: F401 (a fixture)


def _protocols(svc: Keychest) -> dict[tuple[str, int], str]:  # noqa: F811
    return svc.read(
        lambda ctx: {(r.host, r.port): r.protocol for r in ctx.session.scalars(select(EndpointRow))}
    )


def test_scheme_targets_are_registered_with_their_protocol(svc: Keychest) -> None:  # noqa: F811
    key = svc.call(keys.create).key
    added = svc.call(domains.add, key, "SMTP://Mail.Example.net")
    assert str(added.domain) == "smtp://mail.example.net" and added.domain.port == 25
    assert (
        str(svc.call(domains.add, key, "submission://mail.example.net").domain)
        == "submission://mail.example.net"
    )
    svc.call(domains.add, key, "postgres://db.example.net:6432")
    svc.call(domains.add, key, "www.example.net")
    assert _protocols(svc) == {
        ("mail.example.net", 25): "smtp",
        ("mail.example.net", 587): "submission",
        ("db.example.net", 6432): "postgres",
        ("www.example.net", 443): "https",
    }
    # A plain re-add (the certbot hook knows only names) keeps the protocol.
    svc.call(domains.add, key, "mail.example.net:25")
    assert _protocols(svc)[("mail.example.net", 25)] == "smtp"
    due = svc.call(scans.lease_due, owner="t", limit=10, lease_s=60)
    assert {(d.host, d.port, d.protocol) for d in due} == {
        ("mail.example.net", 25, "smtp"),
        ("mail.example.net", 587, "submission"),
        ("db.example.net", 6432, "postgres"),
        ("www.example.net", 443, "https"),
    }


def test_unknown_scheme_is_a_422_listing_the_known_ones(svc: Keychest) -> None:  # noqa: F811
    key = svc.call(keys.create).key
    with pytest.raises(ServiceError) as caught:
        svc.call(domains.add, key, "gopher://mail.example.net")
    assert caught.value.code == 422
    assert "unknown scheme 'gopher'" in str(caught.value) and "smtp, submission, imap" in str(caught.value)


def test_rest_input_keeps_https_urls_and_passes_other_schemes() -> None:
    site = compat.user_domain("https://www.example.net:8443/path")
    assert domains.parse_domain(site.text) == domains.parse_domain("www.example.net:8443")
    mail = compat.user_domain("imap://mail.example.net")
    assert str(domains.parse_domain(mail.text)) == "imap://mail.example.net" and mail.changes == ()
    with pytest.raises(ServiceError, match="known are"):
        domains.parse_domain(compat.user_domain("gopher://x.example.net").text)


def test_listings_show_the_scheme(svc: Keychest) -> None:  # noqa: F811
    from keychest.service import endpoints

    key = svc.call(keys.create).key
    svc.call(domains.add, key, "imap://mail.example.net")
    svc.call(domains.add, key, "www.example.net:8443")
    assert [row.domain for row in svc.read(domains.list_rows)] == [
        "imap://mail.example.net",
        "www.example.net:8443",
    ]
    listed = {row.domain for row in svc.read(endpoints.list_for_key, key)}
    assert listed == {"imap://mail.example.net", "www.example.net:8443"}
