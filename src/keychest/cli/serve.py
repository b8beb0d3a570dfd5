"""`keychest serve`: the whole service in one process."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from keychest.cli.notify import notify_options, notify_settings
from keychest.cli.options import (
    db_option,
    default_mail_domain,
    env_option,
    mail_options,
    mail_settings,
    parse_duration,
    parse_listen,
    resolve_db_url,
)
from keychest.config import Limits, LineServerSettings, SchedulerSettings, Settings
from keychest.scan.model import ScanOptions


@click.command()
@db_option
@env_option("--line-listen", default="0.0.0.0:10023", show_default=True, help="Line API HOST:PORT.")
@env_option(
    "--http-listen",
    default=None,
    help="HTTP HOST:PORT. Roles scanner and mailer serve only /healthz and /metrics there, and "
    "only when it is given. [default: 127.0.0.1:8080 for roles all and api]",
)
@env_option(
    "--mail-domain",
    default=None,
    help="Placeholder addresses end in @this domain; never mailed. [default: this host's FQDN]",
)
@env_option(
    "--keys-per-ip-per-hour",
    type=int,
    default=Limits.keys_per_ip_per_hour,
    show_default=True,
    help="New API keys one address may ask for in an hour (0: no limit).",
)
@env_option(
    "--apikey-burst",
    type=int,
    default=Limits.apikey_burst_per_ip,
    show_default=True,
    help="New API keys one address may ask for in 10 s before 429 (0: no limit).",
)
@env_option(
    "--domains-per-unconfirmed-key",
    type=int,
    default=Limits.domains_per_unconfirmed_key,
    show_default=True,
    help="Domains a key may add before its email is confirmed (0: no limit).",
)
@env_option(
    "--claims-per-email-per-day",
    type=int,
    default=Limits.claims_per_email_per_day,
    show_default=True,
    help="Claims for one address per day (0: no limit).",
)
@env_option(
    "--claims-per-ip-per-hour",
    type=int,
    default=Limits.claims_per_ip_per_hour,
    show_default=True,
    help="Claims one client address may make in an hour (0: no limit).",
)
@env_option(
    "--rest-requests-per-minute",
    type=int,
    default=Limits.rest_requests_per_minute,
    show_default=True,
    help="REST requests per minute per API key and per client address (0: no limit).",
)
@env_option(
    "--rest-failed-keys-per-minute",
    type=int,
    default=Limits.rest_failed_keys_per_minute,
    show_default=True,
    help="REST requests with an unknown API key one address may make per minute before 429 (0: no limit).",
)
@env_option(
    "--metrics-token-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="File holding a bearer token that /metrics then requires (Authorization: Bearer TOKEN).",
)
@env_option(
    "--idle-timeout",
    type=float,
    default=LineServerSettings.idle_timeout_s,
    show_default=True,
    help="Seconds before an idle line API connection is closed.",
)
@env_option(
    "--max-connections",
    type=int,
    default=LineServerSettings.max_connections,
    show_default=True,
    help="Line API connections at once; more get 503.",
)
@env_option(
    "--max-connections-per-ip",
    type=int,
    default=LineServerSettings.max_connections_per_ip,
    show_default=True,
    help="Line API connections one client address (IPv6: a /64) may hold; more get 503 (0: no limit).",
)
@env_option(
    "--line-tls-listen",
    default=None,
    help="Also serve the line API over TLS on HOST:PORT (needs --tls-cert and --tls-key).",
)
@env_option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    default=None,
    help="PEM certificate chain for --line-tls-listen.",
)
@env_option(
    "--tls-key", type=click.Path(dir_okay=False), default=None, help="PEM private key for --line-tls-listen."
)
@env_option(
    "--http-request-timeout",
    type=float,
    default=Settings.http_request_timeout_s,
    show_default=True,
    help="Seconds an HTTP client has to send a request's headers and body (slowloris guard).",
)
@env_option(
    "--http-max-connections",
    type=int,
    default=Settings.http_max_connections,
    show_default=True,
    help="HTTP connections at once; more are answered 503.",
)
@env_option(
    "--role",
    type=click.Choice(["all", "api", "scanner", "mailer"]),
    default="all",
    show_default=True,
    help="Which parts this process runs (several processes can share one PostgreSQL).",
)
@env_option("--scan-interval", default="6h", show_default=True, help="How often each endpoint is scanned.")
@env_option(
    "--scan-timeout", type=float, default=10.0, show_default=True, help="Seconds per DNS lookup/handshake."
)
@env_option("--scan-concurrency", type=int, default=64, show_default=True, help="Endpoints scanned at once.")
@env_option(
    "--scan-lease",
    default=None,
    help="How long a scanner holds an endpoint before another may take it over (its owner died), "
    "e.g. 90s. [default: 4 x --scan-timeout + 60s]",
)
@env_option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Extra trusted CA certificates (PEM), e.g. a private CA.",
)
@env_option(
    "--client-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Client certificate (PEM, with its chain) the scanner offers servers that require one (mutual TLS).",
)
@env_option(
    "--client-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Private key of --client-cert (PEM); default: in the --client-cert file.",
)
@env_option("--resolver", default=None, help="DNS server HOST[:PORT] to ask instead of the system resolver.")
@env_option(
    "--no-rdap",
    is_flag=True,
    help="Do not look up domains' registration expiry by RDAP (domain_expires_soon, domain_expired).",
)
@env_option("--rdap-bootstrap", default=None, metavar="URL", help="RDAP bootstrap file. [default: IANA's]")
@env_option(
    "--allow-private-targets",
    is_flag=True,
    default=False,
    help="Scan loopback/private/link-local addresses too (intranet installs, tests).",
)
@env_option(
    "--acme-directory",
    "acme_directories",
    multiple=True,
    metavar="URL",
    help="ACME directory of a private CA to ask for renewal information (ARI, RFC 9773); repeatable. "
    "Let's Encrypt and Google Trust Services are known without it.",
)
@env_option(
    "--proxy-protocol",
    is_flag=True,
    default=False,
    help="Line API connections from --trusted-proxies start with a PROXY protocol header "
    "(v1 or v2) naming the client; one from any other address is refused.",
)
@env_option(
    "--trusted-proxies",
    default="",
    help="Load balancers (CIDR,...) whose PROXY header (line API) and X-Forwarded-For (HTTP) "
    "name the client address. [default: none]",
)
@env_option(
    "--retention",
    default="90d",
    show_default=True,
    help="Keep the audit log, scan history (each address's newest rows always stay), expired "
    "link tokens and sent mails this long (at least 2d).",
)
@env_option(
    "--db-wait",
    default="5m",
    show_default=True,
    help="At start, how long to wait for a database that does not answer yet (retrying with back-off).",
)
@env_option(
    "--db-pool-size",
    type=int,
    default=Settings.db_pool_size,
    show_default=True,
    help="PostgreSQL connections this process keeps open (up to 10 more in bursts).",
)
@env_option(
    "--metrics-per-endpoint",
    type=click.Choice(["problems", "all"]),
    default="problems",
    show_default=True,
    help="Per-address series in /metrics: only addresses not ok or expiring within the warning "
    "threshold, or all (large: about 600 bytes per address).",
)
@env_option(
    "--migrate",
    is_flag=True,
    default=False,
    help="Upgrade the database schema at start (back it up first); without it only an empty "
    "database is set up and any other schema version is refused.",
)
@mail_options
@notify_options
@env_option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
def serve(
    db_url: str | None,
    data_dir: Path,
    line_listen: str,
    http_listen: str | None,
    mail_domain: str | None,
    keys_per_ip_per_hour: int,
    apikey_burst: int,
    domains_per_unconfirmed_key: int,
    claims_per_email_per_day: int,
    claims_per_ip_per_hour: int,
    rest_requests_per_minute: int,
    rest_failed_keys_per_minute: int,
    metrics_token_file: str | None,
    idle_timeout: float,
    max_connections: int,
    max_connections_per_ip: int,
    line_tls_listen: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    http_request_timeout: float,
    http_max_connections: int,
    role: str,
    scan_interval: str,
    scan_timeout: float,
    scan_concurrency: int,
    scan_lease: str | None,
    ca_file: str | None,
    client_cert: str | None,
    client_key: str | None,
    resolver: str | None,
    no_rdap: bool,
    rdap_bootstrap: str | None,
    allow_private_targets: bool,
    acme_directories: tuple[str, ...],
    smtp: str | None,
    smtp_user: str | None,
    smtp_password_file: str | None,
    smtp_starttls: bool,
    mail_from: str | None,
    public_url: str | None,
    notify_urls: tuple[str, ...],
    webhook_urls: tuple[str, ...],
    webhook_secret_file: str | None,
    renotify: str,
    migrate: bool,
    metrics_per_endpoint: str,
    db_pool_size: int,
    db_wait: str,
    retention: str,
    proxy_protocol: bool,
    trusted_proxies: str,
    log_level: str,
) -> None:
    """Run the line API, the HTTP server and the background work on one database."""
    from keychest.servers.roles import Process, StartupError, run_process

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic narrates every plugin it loads at INFO; the migration lines are enough.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    mail_domain_value = (mail_domain or default_mail_domain()).lower().rstrip(".")
    line_host, line_port = parse_listen(line_listen)
    http_host, http_port = parse_listen(http_listen or "127.0.0.1:8080", "127.0.0.1")
    if line_tls_listen and not (tls_cert and tls_key):
        raise click.UsageError("--line-tls-listen needs --tls-cert and --tls-key")
    proxies = _trusted_proxies(trusted_proxies)
    if proxy_protocol and not proxies:
        raise click.UsageError("--proxy-protocol needs --trusted-proxies (the balancers' addresses)")
    if client_key and not client_cert:
        raise click.BadParameter("needs --client-cert", param_hint="--client-key")
    if client_cert:
        from keychest.scan.probe import TLSClient

        try:  # a bad pair fails now, not at every scan
            TLSClient(1.0, client_cert=client_cert, client_key=client_key)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--client-cert") from None
    settings = Settings(
        db_url=resolve_db_url(db_url, data_dir),
        data_dir=data_dir,
        mail_domain=mail_domain_value,
        line=LineServerSettings(
            host=line_host,
            port=line_port,
            idle_timeout_s=idle_timeout,
            max_connections=max_connections,
            max_connections_per_ip=max_connections_per_ip,
            tls_listen=parse_listen(line_tls_listen) if line_tls_listen else None,
            tls_cert=tls_cert,
            tls_key=tls_key,
            proxy_protocol=proxy_protocol,
            trusted_proxies=proxies,
        ),
        http_host=http_host,
        http_port=http_port,
        http_request_timeout_s=http_request_timeout,
        http_max_connections=http_max_connections,
        limits=Limits(
            keys_per_ip_per_hour=keys_per_ip_per_hour,
            apikey_burst_per_ip=apikey_burst,
            domains_per_unconfirmed_key=domains_per_unconfirmed_key,
            claims_per_email_per_day=claims_per_email_per_day,
            claims_per_ip_per_hour=claims_per_ip_per_hour,
            rest_requests_per_minute=rest_requests_per_minute,
            rest_failed_keys_per_minute=rest_failed_keys_per_minute,
        ),
        metrics_token=_metrics_token(metrics_token_file),
        scan=ScanOptions(
            timeout=scan_timeout,
            ca_file=ca_file,
            allow_private_targets=allow_private_targets,
            resolver=resolver,
            concurrency=max(scan_concurrency * 2, 8),
            acme_directories=acme_directories,
            client_cert=client_cert,
            client_key=client_key,
            rdap=not no_rdap,
            rdap_bootstrap=rdap_bootstrap,
        ),
        scheduler=SchedulerSettings(
            interval_s=parse_duration(scan_interval),
            max_in_flight=scan_concurrency,
            lease_s=parse_duration(scan_lease) if scan_lease else None,
        ),
        role=role,
        migrate=migrate,
        metrics_per_endpoint=metrics_per_endpoint,
        db_pool_size=db_pool_size,
        db_start_timeout_s=parse_duration(db_wait),
        retention_s=_retention(retention),
        role_http=http_listen is not None and role in ("scanner", "mailer"),
        mail=mail_settings(
            smtp,
            smtp_user,
            smtp_password_file,
            smtp_starttls,
            mail_from,
            public_url,
            mail_domain_value,
            f"http://{http_host}:{http_port}",
        ),
        notify=notify_settings(
            notify_urls,
            webhook_urls,
            webhook_secret_file,
            allow_private_targets=allow_private_targets,
            renotify=renotify,
        ),
    )
    try:
        run_process(Process(settings))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


def _retention(text: str) -> float:
    seconds = parse_duration(text)
    if seconds < 2 * 86400:
        # Quotas count claims and keys a day back in the audit log.
        raise click.BadParameter("must be at least 2d", param_hint="--retention")
    return seconds


def _trusted_proxies(text: str) -> tuple[str, ...]:
    from keychest.protocol.proxy import parse_networks

    try:
        return tuple(str(network) for network in parse_networks(text.split(",")))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trusted-proxies") from None


def _metrics_token(path: str | None) -> str | None:
    if path is None:
        return None
    token = Path(path).read_text().strip()
    if not token:
        # An empty file must not quietly leave /metrics open to everyone.
        raise click.BadParameter(f"{path} is empty", param_hint="--metrics-token-file")
    return token
