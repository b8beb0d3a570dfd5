"""The weekly report: when it is due (time zones) and its buckets. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta

from keychest.notify.facts import AddressFacts, CertChange, CertInfo, EndpointFacts
from keychest.notify.weekly import Schedule, build, due_period, subject

DAY = timedelta(days=1)
NOW = datetime(2026, 12, 2, 9, 0)  # a Wednesday, UTC


def test_due_monday_morning_in_the_account_time_zone() -> None:
    monday_8_utc = datetime(2026, 11, 30, 8, 0)
    assert due_period(Schedule(), monday_8_utc - timedelta(minutes=1)) is None
    assert due_period(Schedule(), monday_8_utc) == "weekly:2026-11-30"
    assert due_period(Schedule(), monday_8_utc + timedelta(hours=23)) == "weekly:2026-11-30"
    assert due_period(Schedule(), monday_8_utc + timedelta(hours=25)) is None
    # 08:00 in Prague (UTC+1 in winter) is 07:00 UTC; in New York (UTC-5) 13:00 UTC.
    prague = Schedule(timezone="Europe/Prague")
    assert due_period(prague, datetime(2026, 11, 30, 7, 0)) == "weekly:2026-11-30"
    assert due_period(prague, datetime(2026, 11, 30, 6, 59)) is None
    new_york = Schedule(timezone="America/New_York")
    assert due_period(new_york, datetime(2026, 11, 30, 12, 59)) is None
    assert due_period(new_york, datetime(2026, 11, 30, 13, 0)) == "weekly:2026-11-30"
    # Sunday 23:30 in Tokyo is Sunday 14:30 UTC.
    tokyo = Schedule(day=6, at="23:30", timezone="Asia/Tokyo")
    assert due_period(tokyo, datetime(2026, 11, 29, 14, 30)) == "weekly:2026-11-29"
    assert due_period(Schedule(enabled=False), monday_8_utc) is None


def cert(cid: int, left: timedelta, lifetime: timedelta = 90 * DAY) -> CertInfo:
    return CertInfo(cid, f"{cid:064x}", "Test CA", NOW + left - lifetime, NOW + left)


def ep(eid: int, *addresses: AddressFacts) -> EndpointFacts:
    return EndpointFacts(eid, f"e{eid}.example.net", addresses)


def ok(c: CertInfo, ip: str = "192.0.2.1", problems: tuple[str, ...] = ()) -> AddressFacts:
    return AddressFacts(ip, "ok", c, problems=problems)


def test_buckets() -> None:
    renewed_old, renewed_new = cert(50, 5 * DAY), cert(51, 88 * DAY)
    endpoints = [
        ep(1, ok(cert(1, -2 * DAY))),
        ep(2, ok(cert(2, 3 * DAY))),
        ep(3, ok(cert(3, 20 * DAY))),
        ep(4, ok(cert(4, 60 * DAY))),
        ep(5, ok(cert(5, 70 * DAY))),
        ep(6, ok(renewed_new)),
        ep(7, ok(cert(7, 80 * DAY)), ok(cert(8, 50 * DAY), "192.0.2.2", ("stale_deployment",))),
        ep(8, AddressFacts("192.0.2.9", "error", None, "refused", "connection refused", NOW - DAY)),
    ]
    changes = [
        CertChange(1, 6, "e6.example.net", "192.0.2.1", NOW - 2 * DAY, renewed_old, renewed_new),
        CertChange(2, 4, "e4.example.net", "192.0.2.1", NOW - 10 * DAY, cert(9, 3 * DAY), cert(4, 60 * DAY)),
    ]
    report = build(endpoints, changes, NOW)
    assert [r.endpoint for r in report.expired] == ["e1.example.net"]
    assert [r.endpoint for r in report.expiring_soon] == ["e2.example.net"]
    assert [r.endpoint for r in report.expiring_later] == ["e3.example.net"]
    assert [r.endpoint for r in report.renewed] == ["e6.example.net"]
    assert [r.text for r in report.stale] == ["192.0.2.2 still serves an older certificate"]
    assert [r.text for r in report.errors] == ["192.0.2.9: connection refused"]
    assert (report.fine, report.total) == (3, 8)
    assert report.has_news
    assert subject(report) == (
        "Weekly certificate report: 1 expired, 1 expiring this week, 1 expiring within 28 days, "
        "1 renewed, 1 stale, 1 with errors"
    )
    payload = report.as_payload()
    assert payload["fine"] == 3 and payload["renewed"][0]["endpoint"] == "e6.example.net"  # type: ignore[index]


def test_nothing_to_say_when_all_is_fine() -> None:
    report = build([ep(1, ok(cert(1, 60 * DAY)))], [], NOW)
    assert not report.has_news and report.fine == 1


def test_days_left_rounded_down_as_everywhere_else() -> None:
    # Issue 11 item 7: the dashboard, the line API and `scan` say "4 days" for 4 days 23 hours.
    report = build(
        [ep(1, AddressFacts("192.0.2.1", "critical", cert(1, 4 * DAY + timedelta(hours=23))))], [], NOW
    )
    (row,) = report.expiring_soon
    assert "in 4 days" in row.text and "5 days" not in row.text
