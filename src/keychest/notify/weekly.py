"""The weekly report: when it is due, and what goes in it. Pure; no database, no clock.

A report is sent only when there is something to say (a certificate expiring within 28
days, expired, renewed in the past week, a stale deployment, an endpoint with errors); it
ends with one line about everything that is fine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from keychest.notify.facts import CertChange, EndpointFacts, describe_left

WEEK = timedelta(days=7)
SOON = timedelta(days=7)
LATER = timedelta(days=28)
# A report that could not go out (the mailer was down) is still worth sending for a day.
LATE_ENOUGH = timedelta(days=1)


@dataclass(frozen=True)
class Schedule:
    enabled: bool = True
    day: int = 0  # Monday = 0
    at: str = "08:00"
    timezone: str = "UTC"


def due_period(schedule: Schedule, now: datetime) -> str | None:
    """The key of the report due at ``now`` (naive UTC), e.g. ``weekly:2026-11-30``, or None.

    The scheduled moment is the last ``day`` at ``at`` in the account's time zone; the report
    is due from then until a day later (the caller records the key, so it goes out once).
    """
    if not schedule.enabled:
        return None
    zone = ZoneInfo(schedule.timezone)
    local = now.replace(tzinfo=ZoneInfo("UTC")).astimezone(zone)
    hour, minute = (int(part) for part in schedule.at.split(":"))
    date = local.date() - timedelta(days=(local.weekday() - schedule.day) % 7)
    moment = datetime.combine(date, time(hour, minute), tzinfo=zone)
    if moment > local:
        date -= WEEK
        moment = datetime.combine(date, time(hour, minute), tzinfo=zone)
    if local - moment > LATE_ENOUGH:
        return None
    return f"weekly:{date.isoformat()}"


@dataclass(frozen=True)
class Row:
    endpoint: str
    text: str  # what to say about it, one line
    not_after: str | None = None  # ISO date, for sorting and the HTML table

    def as_dict(self) -> dict[str, str | None]:
        return {"endpoint": self.endpoint, "text": self.text, "not_after": self.not_after}


@dataclass(frozen=True)
class Report:
    expired: tuple[Row, ...] = ()
    expiring_soon: tuple[Row, ...] = ()  # within 7 days
    expiring_later: tuple[Row, ...] = ()  # within 28 days
    renewed: tuple[Row, ...] = ()  # the renewal report: new certificates this week
    stale: tuple[Row, ...] = ()
    errors: tuple[Row, ...] = ()
    fine: int = 0  # endpoints with nothing to report
    total: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def has_news(self) -> bool:
        return bool(
            self.expired
            or self.expiring_soon
            or self.expiring_later
            or self.renewed
            or self.stale
            or self.errors
        )

    def as_payload(self) -> dict[str, object]:
        sections = ("expired", "expiring_soon", "expiring_later", "renewed", "stale", "errors")
        payload: dict[str, object] = {
            name: [row.as_dict() for row in getattr(self, name)] for name in sections
        }
        payload["fine"] = self.fine
        payload["total"] = self.total
        return payload


def build(endpoints: Sequence[EndpointFacts], changes: Sequence[CertChange], now: datetime) -> Report:
    expired: list[Row] = []
    soon: list[Row] = []
    later: list[Row] = []
    stale: list[Row] = []
    failing: list[Row] = []
    fine = 0
    for endpoint in endpoints:
        noted = False
        for cert in sorted(endpoint.certificates, key=lambda c: c.not_after):
            left = cert.left(now)
            row_date = cert.not_after.date().isoformat()
            if left <= timedelta(0):
                expired.append(Row(endpoint.name, f"expired {row_date} ({cert.issuer})", row_date))
            elif left <= SOON:
                soon.append(
                    Row(
                        endpoint.name,
                        f"expires {row_date}, in {describe_left(left)} ({cert.issuer})",
                        row_date,
                    )
                )
            elif left <= LATER:
                later.append(
                    Row(
                        endpoint.name,
                        f"expires {row_date}, in {describe_left(left)} ({cert.issuer})",
                        row_date,
                    )
                )
            else:
                continue
            noted = True
        for address in endpoint.addresses:
            where = address.ip or "DNS"
            if "stale_deployment" in address.problems:
                stale.append(Row(endpoint.name, f"{where} still serves an older certificate"))
                noted = True
            if address.error_kind is not None:
                failing.append(Row(endpoint.name, f"{where}: {address.error or address.error_kind}"))
                noted = True
        if not noted and endpoint.addresses:
            fine += 1
    renewed: list[Row] = []
    seen: set[tuple[int, int]] = set()
    for change in sorted(changes, key=lambda c: c.at):
        if now - change.at > WEEK or (change.endpoint_id, change.new.id) in seen:
            continue
        # A renewal: a newer certificate took over, not an old one coming back.
        if change.old is not None and change.new.not_after <= change.old.not_after:
            continue
        seen.add((change.endpoint_id, change.new.id))
        renewed.append(
            Row(
                change.endpoint,
                f"renewed {change.at:%Y-%m-%d}, now valid until {change.new.not_after:%Y-%m-%d} "
                f"({change.new.issuer})",
                change.new.not_after.date().isoformat(),
            )
        )
    by_date = lambda row: (row.not_after or "", row.endpoint)  # noqa: E731
    return Report(
        expired=tuple(sorted(expired, key=by_date)),
        expiring_soon=tuple(sorted(soon, key=by_date)),
        expiring_later=tuple(sorted(later, key=by_date)),
        renewed=tuple(renewed),
        stale=tuple(stale),
        errors=tuple(failing),
        fine=fine,
        total=len(endpoints),
    )


def subject(report: Report) -> str:
    bits = []
    if report.expired:
        bits.append(f"{len(report.expired)} expired")
    if report.expiring_soon:
        bits.append(f"{len(report.expiring_soon)} expiring this week")
    if report.expiring_later:
        bits.append(f"{len(report.expiring_later)} expiring within 28 days")
    if report.renewed:
        bits.append(f"{len(report.renewed)} renewed")
    if report.stale:
        bits.append(f"{len(report.stale)} stale")
    if report.errors:
        bits.append(f"{len(report.errors)} with errors")
    return "Weekly certificate report: " + (", ".join(bits) or "all fine")
