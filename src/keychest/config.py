"""One typed configuration object, built once from flags and KEYCHEST_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from keychest.scan.model import ScanOptions


@dataclass(frozen=True)
class Limits:
    """Abuse limits. Zero or less switches a limit off (benchmarks, private installs)."""

    keys_per_ip_per_hour: int = 100
    domains_per_unconfirmed_key: int = 100
    claims_per_email_per_day: int = 10
    # Claims one client address may make in an hour, whatever the emails (spraying addresses).
    claims_per_ip_per_hour: int = 100
    # In-memory burst guard in front of the durable hourly quota on `apikey`.
    apikey_burst_per_ip: int = 20
    apikey_burst_window_s: float = 10.0
    # REST requests per minute, counted per API key and per client address (KeyChest had 60).
    rest_requests_per_minute: int = 60
    # REST requests answered 401 (unknown key) one address may make per minute before 429.
    rest_failed_keys_per_minute: int = 10


@dataclass(frozen=True)
class LineServerSettings:
    host: str = "0.0.0.0"
    port: int = 10023
    idle_timeout_s: float = 30.0
    # A request without newline is taken as complete after this pause (docs/protocol.md).
    partial_line_pause_s: float = 0.2
    max_connections: int = 4096
    # Per client address (an IPv6 /64): one address cannot take every connection.
    max_connections_per_ip: int = 256
    max_requests_per_connection: int = 100_000
    # The same protocol over TLS as well (--line-tls-listen): (host, port), cert and key files.
    tls_listen: tuple[str, int] | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # A PROXY protocol header (v1 or v2) names the client on connections from these networks
    # (--proxy-protocol, --trusted-proxies); HTTP trusts their X-Forwarded-For the same way.
    proxy_protocol: bool = False
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class SchedulerSettings:
    interval_s: float = 6 * 3600
    jitter: float = 0.1  # +-10 % of the interval, so endpoints added together drift apart
    max_in_flight: int = 64  # endpoints being scanned at once by this process
    idle_poll_s: float = 1.0  # how soon a newly added domain is noticed
    progress_every_s: float = 60.0
    # How long a leased endpoint stays with one scanner before another may take it over
    # (the owner died). None: four scan time-outs plus a minute (see ScanScheduler.lease_s).
    lease_s: float | None = None
    # After the database fails (restart, network), wait this long before leasing again.
    db_retry_s: float = 2.0


@dataclass(frozen=True)
class MailSettings:
    smtp_host: str | None = None  # None: mails stay queued in the outbox until SMTP is configured
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = None  # read from --smtp-password-file, never from a flag
    smtp_starttls: bool = False
    mail_from: str = "keychest@localhost"
    # Where links in mails point: the dashboard's address as users reach it.
    public_url: str = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class NotifySettings:
    """Alert channels besides mail (docs/notify.md)."""

    # Server-wide channels: every alert of every endpoint, claimed or not.
    apprise_urls: tuple[str, ...] = ()  # --notify
    webhook_urls: tuple[str, ...] = ()  # --webhook
    webhook_secret: str | None = None  # whsec_...: read from --webhook-secret-file
    timeout_s: float = 10.0  # per delivery: a dead receiver holds its own channel this long
    retry_base_s: float = 30.0
    # An open, unacknowledged critical incident is sent again this often (0: never).
    renotify_s: float = 86400.0
    # Channels reach private addresses only when the scanner may (--allow-private-targets).


@dataclass(frozen=True)
class Settings:
    db_url: str
    data_dir: Path
    mail_domain: str
    line: LineServerSettings = field(default_factory=LineServerSettings)
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # A client has this long to send a request's headers and body (slowloris), and at most
    # this many HTTP connections are open at once (more are answered 503).
    http_request_timeout_s: float = 10.0
    http_max_connections: int = 1000
    limits: Limits = field(default_factory=Limits)
    scan: ScanOptions = field(default_factory=ScanOptions)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    mail: MailSettings = field(default_factory=MailSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    # Which parts this process runs: all, api (line + HTTP), scanner, mailer.
    role: str = "all"
    # Bearer token /metrics requires (read from --metrics-token-file); None: open to all.
    metrics_token: str | None = None
    # Upgrade the schema at start (serve --migrate); without it only an empty database is.
    migrate: bool = False
    # /metrics per-address series: "problems" (not ok, or expiring within --warn-days) or "all".
    metrics_per_endpoint: str = "problems"
    # A scanner or mailer serves /healthz and /metrics on http_host:http_port (--http-listen
    # given for that role); api and all always serve HTTP.
    role_http: bool = False
    # PostgreSQL connections this process keeps open (plus up to 10 more in bursts).
    db_pool_size: int = 5
    # How long `serve` waits at start for a database that does not answer yet (--db-wait).
    db_start_timeout_s: float = 300.0
    # Audit log, scan history, expired tokens and sent outbox rows older than this go (--retention).
    retention_s: float = 90 * 86400.0
