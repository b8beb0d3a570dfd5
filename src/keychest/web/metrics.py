"""Prometheus metrics at /metrics.

Two kinds, because keychest may run as several processes (``--role scanner`` and ``api``):

- What the scans found (per endpoint and address: the certificate's not-after, days left,
  up, trusted, hostname ok, the probe's duration) is read from the database at scrape time
  by a custom collector, so the api process reports scans done by any scanner process. One
  query over ``address_states`` (``service.metrics.address_metrics``); cheap even at 10,000
  endpoints.
- What happens inside this process (line API requests, scans it ran, their durations and
  errors) are ordinary in-memory counters and histograms, fed by ``servers.roles`` through
  :func:`observe_line` and :func:`observe_scan`.

With ``--metrics-token-file``, /metrics answers only a scraper that sends that token as
``Authorization: Bearer``: the per-address gauges name every account's hosts.

Names follow blackbox_exporter (``probe_ssl_earliest_cert_expiry``, ``probe_success``)
with a ``keychest_`` prefix; see docs/metrics.md.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from keychest.service import liveness
from keychest.service.errors import StorageUnavailable
from keychest.service.facade import Keychest
from keychest.service.heartbeats import heartbeats
from keychest.service.metrics import (
    address_metrics,
    database_ok,
    metric_aggregates,
    outbox_depth,
    registration_expiries,
)

if TYPE_CHECKING:
    from keychest.scan.model import AddressResult
    from keychest.service.scans import DueEndpoint

# The *_created series only add noise to dashboards built on these counters.
disable_created_metrics()

# In-process metrics: one registry per process, shared by every app the process creates.
PROCESS = CollectorRegistry(auto_describe=True)

LINE_REQUESTS = Counter(
    "keychest_line_requests",
    "Line API requests answered, by command and status code.",
    ["command", "code"],
    registry=PROCESS,
)
SCANS = Counter(
    "keychest_scans",
    "Addresses scanned by this process, by resulting state (ok, warning, critical, error).",
    ["state"],
    registry=PROCESS,
)
SCAN_ERRORS = Counter(
    "keychest_scan_errors",
    "Address scans that failed, by error kind (dns, connect, timeout, tls, blocked, ...).",
    ["kind"],
    registry=PROCESS,
)
SCAN_DURATION = Histogram(
    "keychest_scan_duration_seconds",
    "Time to scan one address (connect and TLS handshake), in this process.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=PROCESS,
)

# Commands are client-chosen text: only known ones become label values (bounded cardinality).
KNOWN_COMMANDS = frozenset({"apikey", "claim", "add", "expiration", "ping", "maildomain", "help"})


def observe_line(command: str, code: int) -> None:
    name = command.lower() if command and command.lower() in KNOWN_COMMANDS else "other"
    LINE_REQUESTS.labels(name, str(code)).inc()


DNS_TIMEOUTS = Counter(
    "keychest_dns_timeouts",
    "Address scans whose DNS lookup timed out, in this process (a slow or unreachable resolver).",
    registry=PROCESS,
)


def observe_scan(item: DueEndpoint, results: Sequence[AddressResult]) -> None:
    for result in results:
        SCANS.labels(str(result.state)).inc()
        SCAN_DURATION.observe(result.elapsed)
        if result.error is not None:
            SCAN_ERRORS.labels(str(result.error.kind)).inc()
            if result.error.kind == "dns" and "timed out" in result.error.message:
                DNS_TIMEOUTS.inc()


# --- from the database, at scrape time ---------------------------------------------------------

LABELS = ["host", "port", "ip"]


def _epoch(moment: datetime) -> float:
    return (moment - datetime(1970, 1, 1)).total_seconds()


def _by_label(name: str, documentation: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    """A gauge with one label: a sample per key of ``values``."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], float(value))
    return family


def _one(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], float(value))
    return family


class ScanResultsCollector(Collector):
    """Aggregates, and per-address gauges for the addresses that need looking at (or all of
    them with --metrics-per-endpoint all), read from the latest scan results in the database."""

    def __init__(self, service: Keychest) -> None:
        self.service = service

    def describe(self) -> list[Any]:
        # Described empty: the registry must not call collect() (a query) when registering.
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._aggregates()
        everything = self.service.settings.metrics_per_endpoint == "all"
        rows = self.service.read(address_metrics, everything=everything)
        now = _epoch(self.service.clock())
        not_after = GaugeMetricFamily(
            "keychest_ssl_cert_not_after_timestamp_seconds",
            "The served leaf certificate's not-after, as a Unix timestamp.",
            labels=LABELS,
        )
        days_left = GaugeMetricFamily(
            "keychest_ssl_cert_days_left",
            "Days until the served leaf certificate expires (negative once expired).",
            labels=LABELS,
        )
        success = GaugeMetricFamily(
            "keychest_probe_success",
            "1 if the last scan of the address completed a TLS handshake, else 0.",
            labels=LABELS,
        )
        trusted = GaugeMetricFamily(
            "keychest_ssl_cert_trusted",
            "1 if the served chain verifies against the trust store, else 0.",
            labels=LABELS,
        )
        hostname = GaugeMetricFamily(
            "keychest_ssl_cert_hostname_ok",
            "1 if the certificate is valid for the endpoint's name, else 0.",
            labels=LABELS,
        )
        duration = GaugeMetricFamily(
            "keychest_probe_duration_seconds",
            "How long the last scan of the address took.",
            labels=LABELS,
        )
        last_scan = GaugeMetricFamily(
            "keychest_last_scan_timestamp_seconds",
            "When the address was last scanned, as a Unix timestamp.",
            labels=LABELS,
        )
        for row in rows:
            labels = [row.host, str(row.port), row.ip]
            success.add_metric(labels, 0.0 if row.error_kind else 1.0)
            last_scan.add_metric(labels, _epoch(row.last_scan_at))
            if row.scan_seconds is not None:
                duration.add_metric(labels, row.scan_seconds)
            if row.not_after is not None:
                expiry = _epoch(row.not_after)
                not_after.add_metric(labels, expiry)
                # The scanner's days_left (whole days, rounded down), as every view and mail says.
                days_left.add_metric(labels, float((expiry - now) // 86400))
            if row.trusted is not None:
                trusted.add_metric(labels, 1.0 if row.trusted else 0.0)
            if row.hostname_ok is not None:
                hostname.add_metric(labels, 1.0 if row.hostname_ok else 0.0)
        yield from (not_after, days_left, success, trusted, hostname, duration, last_scan)
        registration = GaugeMetricFamily(
            "keychest_domain_registration_expiry_timestamp_seconds",
            "The registrable domain's registration expiry (RDAP), as a Unix timestamp.",
            labels=["domain"],
        )
        for domain, expires in self.service.read(registration_expiries, everything=everything).items():
            registration.add_metric([domain], _epoch(expires))
        yield registration

    def _aggregates(self) -> Iterator[GaugeMetricFamily]:
        found = self.service.read(metric_aggregates)
        yield _by_label(
            "keychest_endpoints",
            "Monitored endpoints by the worst state of their last scan (unscanned: not yet).",
            "state",
            found.endpoints_by_state,
        )
        yield _by_label(
            "keychest_certificates",
            "Served leaf certificates by days left: expired, lt7 ... lt90 (fewer than N days), more.",
            "days_left",
            found.certificates_by_days_left,
        )
        yield _one("keychest_addresses", "Scanned addresses (endpoint and IP).", found.addresses)
        if found.earliest_expiry is not None:
            yield _one(
                "keychest_ssl_earliest_cert_expiry",
                "The soonest not-after of any served leaf certificate, as a Unix timestamp.",
                _epoch(found.earliest_expiry),
            )


class HeartbeatCollector(Collector):
    """Every keychest process's heartbeat row: a dead scanner shows on any node's /metrics."""

    def __init__(self, service: Keychest) -> None:
        self.service = service

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["role", "host", "pid", "version"]
        seen = GaugeMetricFamily(
            "keychest_heartbeat_age_seconds",
            "Seconds since each keychest process (any role, any machine) last wrote its heartbeat "
            "(every 10 s while it runs).",
            labels=labels,
        )
        passed = GaugeMetricFamily(
            "keychest_loop_pass_age_seconds",
            "Seconds since the main loop of each process last went round (scanner: a lease round; "
            "mailer: an outbox round), as of its last heartbeat.",
            labels=labels,
        )
        for row in self.service.read(heartbeats):
            values = [row.role, row.host, str(row.pid), row.version]
            seen.add_metric(values, row.age_s)
            if row.pass_age_s is not None:
                passed.add_metric(values, row.pass_age_s)
        yield from (seen, passed)


class OutboxCollector(Collector):
    """Outbox depth and the age of the oldest queued row, from the database at scrape time."""

    def __init__(self, service: Keychest) -> None:
        self.service = service

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        found = self.service.read(outbox_depth)
        depth = _by_label(
            "keychest_outbox_rows",
            "Outbox rows (mails and channel notifications) not yet sent: queued, sending, failed.",
            "state",
            found.by_state,
        )
        oldest = _one(
            "keychest_outbox_oldest_queued_seconds",
            "Age of the oldest queued outbox row (0 when none waits).",
            found.oldest_queued_age_s or 0.0,
        )
        sends = GaugeMetricFamily(
            "keychest_outbox_messages",
            "Outbox rows by channel (mail, or an alert channel's id) and result "
            "(queued, sending, sent, failed, skipped), as kept by --retention.",
            labels=["channel", "state"],
        )
        for (channel, state), count in sorted(found.by_channel.items()):
            sends.add_metric([channel, state], float(count))
        yield from (depth, oldest, sends)


class LivenessCollector(Collector):
    """This process's own loops (/metrics of a scanner or mailer)."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield _by_label(
            "keychest_process_loop_age_seconds",
            "Seconds since this process's loop last went round.",
            "loop",
            liveness.ages(),
        )


# /healthz of a scanner or mailer fails when its loop has not gone round for this long.
LOOP_STALE_S = 120.0


def create_role_app(service: Keychest) -> FastAPI:
    """HTTP of a scanner or mailer process (--http-listen): /healthz and /metrics only."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LivenessCollector())
    registry.register(HeartbeatCollector(service))
    if service.settings.role == "mailer":
        registry.register(OutboxCollector(service))

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> PlainTextResponse:
        try:
            service.read(database_ok)
        except StorageUnavailable:
            return PlainTextResponse("database unreachable\n", status_code=503)
        age = liveness.oldest()
        if age is None:
            return PlainTextResponse("starting: no loop pass yet\n", status_code=503)
        if age > LOOP_STALE_S:
            return PlainTextResponse(f"loop stuck: last pass {age:.0f} s ago\n", status_code=503)
        return PlainTextResponse(f"ok: last pass {age:.1f} s ago\n")

    _metrics_route(app, service, registry)
    return app


def install(app: FastAPI, service: Keychest) -> None:
    scans = CollectorRegistry(auto_describe=False)
    scans.register(ScanResultsCollector(service))
    scans.register(HeartbeatCollector(service))
    scans.register(OutboxCollector(service))
    _metrics_route(app, service, scans)


def _metrics_route(app: FastAPI, service: Keychest, scans: CollectorRegistry) -> None:

    token = service.settings.metrics_token

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if token is not None and not _bearer_matches(request, token):
            return PlainTextResponse(
                "/metrics needs Authorization: Bearer TOKEN (see --metrics-token-file)\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        # Two registries, one exposition: metric names never overlap between them.
        body = generate_latest(scans) + generate_latest(PROCESS)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _bearer_matches(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Compared in constant time: the token is the only thing between a stranger and every
    # account's host names.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
