"""The dashboard's server page shows the domain's registration expiry (RDAP, issue 14 item 7)
when the last scan knew it: the real template and helpers, as Pages.render gives them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest

from keychest.scan.model import ScanOptions
from keychest.service import overview
from keychest.web import dashboard

NOW = dt.datetime(2026, 12, 1, 12, 0)


@pytest.mark.parametrize(
    ("expires", "text", "css"),
    [
        (NOW + dt.timedelta(days=20, hours=12), "20 days", "plan"),
        (NOW - dt.timedelta(days=3), "expired 3 days ago", "expired"),
    ],
)
def test_server_page_shows_the_registration_block(expires: dt.datetime, text: str, css: str) -> None:
    """The dashboard's own template and helpers, as Pages.render gives them."""
    now = NOW
    detail = overview.ServerDetail(
        1, "www.example.test", "warning", now, now, [], [], registration_expires=expires
    )
    context = {
        "account": overview.AccountInfo(1, "ops@example.org", "active"),
        "csrf": "x",
        "now": now,
        "page": "servers",
        "days_left": lambda m: dashboard.days_left(m, now),
        "ago": lambda m: dashboard.ago(m, now),
        "expiry_class": lambda m: dashboard.expiry_class(m, now, ScanOptions()),
        "server": detail,
        "holds": [],
        "hold_typed": {},
    }
    html = dashboard.TEMPLATES.get_template("dashboard/server.html").render(context)
    block = re.search(r'<p class="muted" id="registration">(.*?)</p>', html, re.S)
    assert block is not None, html
    assert re.sub(r"<[^>]+>|\s+", " ", block.group(1)).split() == [
        "Domain",
        "registration",
        "(RDAP):",
        *text.split(),
    ]
    assert f'class="{css}"' in block.group(1)
    unknown = dataclasses.replace(detail, registration_expires=None)
    assert 'id="registration"' not in dashboard.TEMPLATES.get_template("dashboard/server.html").render(
        {**context, "server": unknown}
    )
