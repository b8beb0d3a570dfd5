"""`keychest scan`: a one-shot scan without a database, a better ssl-cert-check.

Exit status follows the monitoring-plugin convention: 0 all ok, 1 a warning, 2 a critical
finding or an error, so it drops into Nagios/Icinga/cron as it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import io
import json
import multiprocessing
import os
import select
import sys
from collections.abc import Coroutine, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TextIO, TypeVar

import click

from keychest.scan.model import AddressResult, ScanOptions
from keychest.scan.report import exit_status, render_table, results_to_json
from keychest.scan.runner import Scanner
from keychest.scan.targets import Endpoint, parse_endpoint, parse_resolve, parse_target_lines

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


async def _scan_grouped(endpoints: Sequence[Endpoint], options: ScanOptions) -> list[list[AddressResult]]:
    return await Scanner(options).scan_grouped(endpoints)


def _scan_chunk(endpoints: Sequence[Endpoint], options: ScanOptions) -> list[list[AddressResult]]:
    return _run(_scan_grouped(endpoints, options))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def run_scan(endpoints: Sequence[Endpoint], options: ScanOptions, workers: int = 1) -> list[AddressResult]:
    """Scan in this process, or split round-robin over `workers` processes when the
    handshakes' CPU cost (key exchange, chain parsing) is what limits throughput."""
    workers = max(1, min(workers, len(endpoints)))
    grouped: list[list[AddressResult]]
    if workers == 1:
        grouped = _scan_chunk(endpoints, options)
    else:
        # The limits are for the whole scan, so each process gets its share.
        share = dataclasses.replace(
            options,
            concurrency=_ceil_div(options.concurrency, workers),
            per_address_concurrency=_ceil_div(options.per_address_concurrency, workers),
        )
        chunks = [list(endpoints[i::workers]) for i in range(workers)]
        # fork: the children need nothing but the code already imported, and start at once.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            parts = list(pool.map(_scan_chunk, chunks, [share] * workers))
        grouped = [[] for _ in endpoints]
        for worker, part in enumerate(parts):
            for offset, results in enumerate(part):
                grouped[worker + offset * workers] = results
    return [result for results in grouped for result in results]


def write_all(fd: int, data: bytes) -> None:
    """Every byte of `data` to `fd`, or OSError.

    Not sys.stdout.write: under PYTHONUNBUFFERED (or -u) its buffer is the raw file, whose
    one write() may take only part of the text (a full pipe that a parent or another
    process sharing it left O_NONBLOCK, a signal), and TextIOWrapper drops the rest
    silently: a pipe reader got exactly 64 KiB and exit status 0.
    """
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            # The fd is non-blocking and the reader lags: wait until it drains.
            select.select([], [fd], [])
            continue
        view = view[written:]


def _emit(text: str) -> None:
    """Print `text` on stdout completely; a reader that is gone or a full disk is an error
    (exit 2), never a silent exit 0 with the report lost."""
    try:
        sys.stdout.flush()
        write_all(
            sys.stdout.fileno(), text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict")
        )
    except OSError as exc:
        # Nothing more can reach this stdout; keep the interpreter's final flush quiet.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        click.echo(f"keychest scan: cannot write the results: {exc}", err=True)
        sys.exit(2)


def _read_targets(targets: Sequence[str], files: Sequence[TextIO]) -> list[Endpoint]:
    endpoints: list[Endpoint] = []
    for text in targets:
        try:
            endpoints.append(parse_endpoint(text))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="TARGET") from None
    for handle in files:
        try:
            endpoints.extend(parse_target_lines(handle))
        except ValueError as exc:
            raise click.BadParameter(f"{handle.name}: {exc}", param_hint="-f") from None
    if not endpoints:
        raise click.UsageError("no targets: give TARGET arguments or -f FILE")
    return endpoints


@click.command("scan")
@click.argument("targets", nargs=-1, metavar="TARGET...")
@click.option(
    "-f",
    "--file",
    "files",
    multiple=True,
    type=click.File("r"),
    help="Read targets from FILE, one per line (`host[:port]` or ssl-cert-check's `host port`); - is stdin.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per (target, address).")
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Extra trusted CA certificates (PEM), e.g. a private CA; added to the system's.",
)
@click.option("--no-system-trust", is_flag=True, help="Trust only --ca-file, not the system CA bundle.")
@click.option(
    "--client-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="Client certificate (PEM, with its chain) for servers that require one (mutual TLS).",
)
@click.option(
    "--client-key",
    type=click.Path(exists=True, dir_okay=False),
    help="Private key of --client-cert (PEM); default: in the --client-cert file.",
)
@click.option(
    "--allow-private-targets",
    is_flag=True,
    help="Scan addresses that are not globally routable: loopback, private, link-local, CGNAT, "
    "NAT64/6to4 forms of those... (refused by default).",
)
@click.option(
    "--warn-days",
    type=click.IntRange(0),
    default=30,
    show_default=True,
    help="Warning when fewer full days of validity remain.",
)
@click.option(
    "--crit-days",
    type=click.IntRange(0),
    default=7,
    show_default=True,
    help="Critical when fewer full days of validity remain.",
)
@click.option(
    "--resolve",
    "resolve",
    multiple=True,
    metavar="HOST:PORT:ADDRESS",
    help="Connect to ADDRESS for HOST:PORT instead of resolving HOST, the name still used for SNI"
    " and the name check (curl's syntax; repeatable): one backend behind a load balancer.",
)
@click.option("--resolver", metavar="IP[:PORT]", help="Ask this DNS server instead of the system resolver.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds for the DNS lookup, and again for connect + TLS handshake of each address.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Handshakes in flight at once.",
)
@click.option(
    "--per-address",
    "per_address",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Handshakes in flight against one IP address.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Processes to spread the handshakes over (for thousands of targets).",
)
@click.option(
    "--rdap",
    is_flag=True,
    help="Also look up each domain's registration expiry by RDAP (registration_expires,"
    " domain_expires_soon, domain_expired).",
)
@click.option(
    "--rdap-bootstrap",
    metavar="URL",
    help="RDAP bootstrap file to find each TLD's RDAP server (default: IANA's).",
)
@click.option(
    "--no-old-protocols",
    is_flag=True,
    help="Skip the extra handshake that checks whether TLS 1.0/1.1 are still accepted (old_protocol).",
)
@click.option(
    "--no-revocation",
    is_flag=True,
    help="Do not ask CRLs and OCSP responders whether the certificates were revoked.",
)
@click.option(
    "--acme-directory",
    "acme_directories",
    multiple=True,
    metavar="URL",
    help="ACME directory of a private CA to ask for renewal information (ARI, RFC 9773); repeatable."
    " Let's Encrypt and Google Trust Services are known without it.",
)
def scan(
    targets: tuple[str, ...],
    files: tuple[TextIO, ...],
    as_json: bool,
    ca_file: str | None,
    no_system_trust: bool,
    client_cert: str | None,
    client_key: str | None,
    allow_private_targets: bool,
    warn_days: int,
    crit_days: int,
    resolve: tuple[str, ...],
    resolver: str | None,
    timeout: float,
    concurrency: int,
    per_address: int,
    workers: int,
    rdap: bool,
    rdap_bootstrap: str | None,
    no_old_protocols: bool,
    no_revocation: bool,
    acme_directories: tuple[str, ...],
) -> None:
    """Check the TLS certificates of TARGETs (`host`, `host:port`, `[v6addr]:port`, an
    `https://` URL, or `scheme://host[:port]`: STARTTLS smtp, submission, imap, pop3, ldap,
    xmpp, xmpp-server, postgres, mysql, ftp, sieve; implicit TLS https, smtps, imaps, pop3s,
    ldaps; each with its usual port) now. Names are taken as UTS 46 (straße.example is
    xn--strae-oqa.example); underscores are accepted here, unlike when registering a domain.

    Every address of a name is checked separately. Exit status: 0 ok, 1 warning,
    2 critical or error.
    """
    endpoints = _read_targets(targets, files)
    if crit_days > warn_days:
        raise click.BadParameter("must not exceed --warn-days", param_hint="--crit-days")
    pinned = []
    for text in resolve:
        try:
            pinned.append(parse_resolve(text))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--resolve") from None
    if client_key and not client_cert:
        raise click.BadParameter("needs --client-cert", param_hint="--client-key")
    try:
        options = ScanOptions(
            timeout=timeout,
            ca_file=ca_file,
            system_trust=not no_system_trust,
            allow_private_targets=allow_private_targets,
            resolver=resolver,
            warn_days=warn_days,
            crit_days=crit_days,
            concurrency=concurrency,
            per_address_concurrency=per_address,
            revocation=not no_revocation,
            old_protocols=not no_old_protocols,
            resolve=tuple(pinned),
            rdap=rdap or rdap_bootstrap is not None,
            rdap_bootstrap=rdap_bootstrap,
            acme_directories=acme_directories,
            client_cert=client_cert,
            client_key=client_key,
        )
        Scanner(options)  # fail on a bad CA file or resolver before forking workers
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    # Everything imported so far lives until exit: keep the collector from walking it
    # again and again while thousands of results are made.
    gc.freeze()
    results = run_scan(endpoints, options, workers)
    if as_json:
        # One write: json.dump() would issue a write per token, which costs more than the
        # scan itself for thousands of results.
        _emit(json.dumps(results_to_json(results), indent=2) + "\n")
    else:
        from rich.console import Console

        # Piped (cron mail, CI logs): rich would assume 80 columns and fold every cell.
        # Rendered into memory, then written whole by _emit: no tail lost to a short write.
        tty = sys.stdout.isatty()
        console = Console(file=io.StringIO(), width=None if tty else 160, force_terminal=tty)
        console.print(render_table(results))
        _emit(console.file.getvalue())  # type: ignore[attr-defined]
    sys.exit(exit_status(results))


if __name__ == "__main__":
    scan()
