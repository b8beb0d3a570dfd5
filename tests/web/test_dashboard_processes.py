"""Issue 16: the overview shows every keychest process's heartbeat (role, host, pid, version,
age of its last pass), a stale one marked, through the real app signed in with a real link."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from keychest.service import heartbeats
from keychest.service.facade import Keychest
from keychest.service.heartbeats import ProcessInfo
from keychest.store.models import Heartbeat
from keychest.web.dashboard import seconds_text
from tests.notify.test_channels_rest import app_for, confirmed_key
from tests.web.test_dashboard_channels import sign_in

pytestmark = pytest.mark.timeout(120)

ROW = re.compile(r'<tr data-role="(\w+)"( class="stale")?>(.*?)</tr>', re.S)


@pytest.fixture
def app(db_url: str) -> Iterator[tuple[Keychest, TestClient]]:
    service, client = app_for(db_url, allow_private=True)
    client.follow_redirects = False
    with client:
        yield service, client
    service.db.dispose()


def test_overview_lists_processes_and_marks_the_stale_one(app: tuple[Keychest, TestClient]) -> None:
    service, client = app
    confirmed_key(service, "ops@example.org", "www.example.net")
    service.call(heartbeats.beat, ProcessInfo("api", "web-1", 101, "9.9.1"), 3.0)
    service.call(heartbeats.beat, ProcessInfo("scanner", "scan-2", 202, "9.9.2"), 1.0)
    with service.db.write() as session:  # the scanner died ten minutes ago
        row = session.get(Heartbeat, "scanner:scan-2:202")
        assert row is not None
        row.seen_at -= timedelta(minutes=10)
    assert client.get("/").status_code == 303  # signed out: no processes shown
    sign_in(service, client, "ops@example.org")
    page = client.get("/")
    assert page.status_code == 200
    assert "<h2>Processes</h2>" in page.text and "1 stale" in page.text
    rows = {role: (stale, cells) for role, stale, cells in ROW.findall(page.text)}
    assert set(rows) == {"api", "scanner"}
    api_stale, api_cells = rows["api"]
    assert not api_stale and "web-1" in api_cells and "101" in api_cells and "9.9.1" in api_cells
    scanner_stale, scanner_cells = rows["scanner"]
    assert scanner_stale and "scan-2" in scanner_cells and ">stale<" in scanner_cells
    assert "10 min ago" in scanner_cells or "9 min ago" in scanner_cells


def test_seconds_text() -> None:
    assert [seconds_text(s) for s in (None, 4.9, 119, 600, 7200, 3 * 86400)] == [
        "no pass yet",
        "4 s",
        "119 s",
        "10 min",
        "2 h",
        "3 d",
    ]
