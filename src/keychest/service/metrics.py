"""What the observability routes read: the latest scan result per address, and a liveness probe.

``web/metrics.py`` turns :class:`AddressMetric` rows into Prometheus gauges at scrape time;
``/healthz`` calls :func:`database_ok`. Both are reads, through ``Keychest.read``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text

from keychest.service.context import Ctx
from keychest.store.models import AddressState, Certificate, Endpoint


@dataclass(frozen=True)
class AddressMetric:
    host: str
    port: int
    ip: str
    error_kind: str | None
    trusted: bool | None
    hostname_ok: bool | None
    scan_seconds: float | None
    last_scan_at: datetime
    not_after: datetime | None


def address_metrics(ctx: Ctx) -> list[AddressMetric]:
    """Every address's latest scan, sorted by host, port and address (one query)."""
    rows = ctx.session.execute(
        select(
            Endpoint.host,
            Endpoint.port,
            AddressState.ip,
            AddressState.error_kind,
            AddressState.trusted,
            AddressState.hostname_ok,
            AddressState.scan_seconds,
            AddressState.last_scan_at,
            Certificate.not_after,
        )
        .join(Endpoint, Endpoint.id == AddressState.endpoint_id)
        .outerjoin(Certificate, Certificate.id == AddressState.certificate_id)
        .order_by(Endpoint.host, Endpoint.port, AddressState.ip)
    ).all()
    return [
        AddressMetric(
            host=row.host,
            port=row.port,
            ip=row.ip,
            error_kind=row.error_kind,
            trusted=row.trusted,
            hostname_ok=row.hostname_ok,
            scan_seconds=None if row.scan_seconds is None else float(row.scan_seconds),
            last_scan_at=row.last_scan_at,
            not_after=row.not_after,
        )
        for row in rows
    ]


def database_ok(ctx: Ctx) -> bool:
    """True once the database answered a trivial query (a failure raises from the driver)."""
    return ctx.session.execute(text("SELECT 1")).scalar() == 1
