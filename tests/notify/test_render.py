"""Every mail template renders in both parts; messages carry the headers mail needs."""

from __future__ import annotations

import email
import email.policy
from datetime import datetime

import pytest

from keychest.config import MailSettings
from keychest.notify import render
from keychest.notify.mail import Composed, Outgoing
from keychest.notify.smtp import build_message, message_id
from keychest.service.outbox import KeySummary

AT = "2026-12-01T10:00:00"
BASE = {"email": "owner@example.org", "public_url": "https://kc.example.net", "ip": "198.51.100.7", "at": AT}
KEY = KeySummary(1, "abcdefgh", "active", ("www.example.net", "<script>.example.net:8443"))
REPORT = {
    "expired": [{"endpoint": "old.example.net", "text": "expired 2026-11-20 (Test CA)", "not_after": None}],
    "expiring_soon": [{"endpoint": "soon.example.net", "text": "expires in 3 days", "not_after": None}],
    "expiring_later": [],
    "renewed": [{"endpoint": "new.example.net", "text": "renewed 2026-11-29", "not_after": None}],
    "stale": [],
    "errors": [{"endpoint": "down.example.net", "text": "192.0.2.1: connection refused", "not_after": None}],
    "fine": 4,
    "total": 8,
}
ALERTS = [
    {
        "key": "k",
        "kind": "expiry",
        "severity": "critical",
        "title": "Certificate expires in 2 days: a.example.net",
        "detail": "The certificate from <Test CA> expires soon.",
        "endpoints": ["a.example.net"],
    },
]
CONTEXTS = {
    "reopen_account": {**BASE, "key": KEY, "reopen_url": "https://kc/reopen/T9"},
    "confirm_account": {
        **BASE,
        "key": KEY,
        "confirm_url": "https://kc/confirm/T1",
        "block_url": "https://kc/block/T2",
    },
    "approve_key": {
        **BASE,
        "key": KEY,
        "approve_url": "https://kc/keys/approve/T3",
        "revoke_url": "https://kc/r/T4",
    },
    "signin": {**BASE, "signin_url": "https://kc/signin/T5"},
    "confirm_address": {**BASE, "confirm_url": "https://kc/confirm-address/T6"},
    "alerts": {
        **BASE,
        "alerts": ALERTS,
        "unsubscribe_url": "https://kc/unsubscribe/T7",
        "dashboard_url": "https://kc/",
    },
    "weekly": {
        **BASE,
        "report": REPORT,
        "unsubscribe_url": "https://kc/unsubscribe/T8",
        "dashboard_url": "https://kc/",
    },
}


@pytest.mark.parametrize("kind", render.KINDS)
def test_every_template_renders_both_parts(kind: str) -> None:
    text, html = render.render(kind, **CONTEXTS[kind])
    assert text.strip() and html.strip().startswith("<!doctype html>")
    assert "{{" not in text and "{%" not in html
    for value in CONTEXTS[kind].values():
        if isinstance(value, str) and value.startswith("https://kc/"):
            assert value in text and f'href="{value}"' in html
    if kind in ("confirm_account", "approve_key", "reopen_account"):
        assert "198.51.100.7" in text and "abcdefgh..." in text and "2026-12-01 10:00 UTC" in text
        assert "www.example.net" in text and "&lt;script&gt;.example.net" in html and "<script>" not in html
    if kind == "weekly":
        for word in ("Expired", "Expiring within 7 days", "Renewed this week", "Endpoints with errors"):
            assert word in text and word in html
        assert "Expiring within 28 days" not in text  # empty buckets are left out
        assert "4 of 8 endpoints fine" in text
    if kind == "alerts":
        assert "CRITICAL: Certificate expires in 2 days" in text and "&lt;Test CA&gt;" in html


def test_a_missing_value_is_an_error_not_a_blank() -> None:
    with pytest.raises(Exception, match="confirm_url"):
        render.render("confirm_address", **BASE)


def test_message_headers_and_parts() -> None:
    settings = MailSettings(mail_from="keychest@kc.example.net")
    created = datetime(2026, 12, 1, 10, 0)
    headers = {
        "List-Unsubscribe": "<https://kc/unsubscribe/T>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    outgoing = Outgoing(
        42, "weekly", "owner@example.org", created, 1, Composed("Subject é", "text", "<p>html</p>", headers)
    )
    message = build_message(settings, outgoing, datetime(2026, 12, 1, 10, 5))
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == message_id(42, created, settings.mail_from)
    assert parsed["Message-ID"].endswith("@kc.example.net>")
    assert parsed["Date"] == "Tue, 01 Dec 2026 10:05:00 +0000"
    assert (
        parsed["Subject"] == "Subject é" and parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    )
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed.get_body(("plain",)).get_content().strip() == "text"  # type: ignore[union-attr]
    assert "<p>html</p>" in parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    # A retry of the same row keeps its Message-ID: a duplicate is recognisable as one.
    again = build_message(settings, outgoing, datetime(2026, 12, 1, 11, 0))
    assert again["Message-ID"] == message["Message-ID"]


def test_certificate_strings_cannot_add_lines_to_text_mails() -> None:
    # Issue 10 item 7: a subject, issuer or SAN is the certificate owner's text; a control
    # character in it is shown escaped, so it cannot forge a line ("Dashboard: https://evil").
    evil = "www.example.net\nDashboard: https://evil.example/\r\x1b[31m\u2028x"
    alert = {
        "key": "k",
        "kind": "expiry",
        "severity": "critical",
        "title": f"Certificate expires in 2 days: {evil}",
        "detail": f"The certificate from {evil} expires soon. " + "word " * 30,
        "endpoints": [evil],
    }
    text, html = render.render("alerts", **{**CONTEXTS["alerts"], "alerts": [alert]})
    lines = text.splitlines()
    assert not any(line.lstrip().startswith("Dashboard: https://evil") for line in lines)
    assert "\x1b" not in text and "\u2028" not in text and "\r" not in text
    assert "www.example.net\\nDashboard: https://evil.example/\\r\\x1b[31m\\u2028x" in text
    # Wrapping still lays out long details on indented lines of the template's own making.
    assert any(line.startswith("  word") for line in lines)
    assert "\x1b" not in html
