"""Benchmark `keychest scan` against ssl-cert-check, check_ssl_cert and `openssl s_time -new`.

    .venv/bin/python bench/scan.py [-n 500] [--server-procs 2] [--workers 1,2]

Starts N TLS endpoints on 127.0.0.1 (an asyncio/uvloop TLS server in worker processes,
each listening on its share of N ports, all serving one ECDSA P-256 certificate from a
private test CA), then in the same run measures:

- keychest scan: all N endpoints, wall time of the whole command (start-up included),
  every result checked to be "ok" (trusted through --ca-file, name, dates);
- ssl-cert-check (Debian package) and check_ssl_cert (monitoring-plugins-contrib): the
  way they are run, one endpoint after the other; on a sample, since they are slow;
- the ceiling: `openssl s_time -new` in 4 processes for a fixed time (full handshakes
  per second, nothing judged, nothing parsed beyond what TLS needs);
- STARTTLS: as many SMTP endpoints (greeting, EHLO, STARTTLS, then TLS), scanned as
  `smtp://` targets by `keychest scan`, against its ceiling: `openssl s_client -starttls
  smtp` run back to back in 4 parallel loops for a fixed time.

keychest runs with `--no-old-protocols`: the old_protocol check is one more handshake per
endpoint, which the peers do not make.

Prints a Markdown table; `--markdown FILE` also writes it there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHECK_SSL_CERT = "/usr/lib/nagios/plugins/check_ssl_cert"


# --- the endpoints ---------------------------------------------------------------------------


class _Hangup(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # close our side too


async def _smtp_session(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
) -> None:
    """Just enough SMTP for a STARTTLS client: greeting, EHLO, STARTTLS, then TLS until EOF."""
    try:
        writer.write(b"220 bench.test ESMTP\r\n")
        while line := await reader.readline():
            command = line.strip().upper()
            if command.startswith((b"EHLO", b"HELO")):
                writer.write(b"250-bench.test\r\n250 STARTTLS\r\n")
            elif command == b"STARTTLS":
                writer.write(b"220 go ahead\r\n")
                await writer.drain()
                await writer.start_tls(context)
                await reader.read(1024)
                break
            else:
                writer.write(b"221 bye\r\n")
                break
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _serve(endpoints: list[tuple[int, str, str]], ready: Any, smtp: bool = False) -> None:
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    servers = []
    for port, chain, key in endpoints:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)
        # Without tickets: every scan is a fresh client; tickets would only cost us.
        context.options |= ssl.OP_NO_TICKET
        if smtp:

            async def session(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext = context
            ) -> None:
                await _smtp_session(reader, writer, context)

            server = asyncio.start_server(session, "127.0.0.1", port, backlog=1024, reuse_address=True)
            servers.append(loop.run_until_complete(server))
            continue
        servers.append(
            loop.run_until_complete(
                loop.create_server(_Hangup, "127.0.0.1", port, ssl=context, backlog=1024, reuse_address=True)
            )
        )
    ready.put(len(servers))
    loop.run_forever()


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


class Endpoints:
    def __init__(self, count: int, procs: int, workdir: Path, smtp: bool = False) -> None:
        import trustme

        ca = trustme.CA(organization_name="Keychest Bench CA")
        self.ca_file = workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.ports = _free_ports(count)
        # A certificate of its own for every endpoint, as in real life: nothing the scanner
        # caches per leaf can make the numbers look better than they are.
        served = []
        for index, port in enumerate(self.ports):
            leaf = ca.issue_cert(f"e{index}.bench.test", "127.0.0.1")
            chain, key = workdir / f"chain{index}.pem", workdir / f"key{index}.pem"
            leaf.private_key_and_cert_chain_pem.write_to_path(str(chain))
            leaf.private_key_pem.write_to_path(str(key))
            served.append((port, str(chain), str(key)))
        context = multiprocessing.get_context("spawn")
        ready = context.Queue()
        self.processes = [
            context.Process(target=_serve, args=(served[i::procs], ready, smtp), daemon=True)
            for i in range(procs)
        ]
        for process in self.processes:
            process.start()
        for _ in self.processes:
            ready.get(timeout=120)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(10)


# --- the contenders ----------------------------------------------------------------------------


def _targets_file(workdir: Path, ports: list[int], name: str, scheme: str = "") -> Path:
    path = workdir / name
    if scheme:
        path.write_text("".join(f"{scheme}://127.0.0.1:{port}\n" for port in ports))
    else:
        path.write_text("".join(f"127.0.0.1 {port}\n" for port in ports))
    return path


def bench_keychest(
    endpoints: Endpoints, workdir: Path, workers: int, concurrency: int, scheme: str = ""
) -> dict[str, Any]:
    targets = _targets_file(workdir, endpoints.ports, f"targets{scheme}.txt", scheme)
    keychest = shutil.which("keychest", path=str(Path(sys.executable).parent)) or "keychest"
    command = [
        keychest, "scan", "--json", "--allow-private-targets", "--ca-file", str(endpoints.ca_file),
        "--no-system-trust", "--concurrency", str(concurrency), "--per-address", str(concurrency),
        "--workers", str(workers), "--timeout", "30", "--no-old-protocols", "-f", str(targets),
    ]  # fmt: skip
    output = workdir / f"out{scheme}.json"
    started = time.perf_counter()
    with output.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    results = json.loads(output.read_text())
    bad = [r for r in results if r["state"] != "ok"]
    if bad or len(results) != len(endpoints.ports):
        raise SystemExit(
            f"keychest scan gave {len(bad)} bad results, e.g. {bad[:1]}; stderr: {done.stderr[-2000:]}"
        )
    return {"endpoints": len(results), "seconds": elapsed, "rate": len(results) / elapsed}


def bench_in_process(endpoints: Endpoints, workers: int, concurrency: int) -> dict[str, Any]:
    """The scan phase alone: what `keychest scan` does after start-up, through the same function."""
    from keychest.cli.scan import run_scan
    from keychest.scan import Endpoint, ScanOptions

    options = ScanOptions(
        timeout=30,
        ca_file=str(endpoints.ca_file),
        system_trust=False,
        allow_private_targets=True,
        concurrency=concurrency,
        per_address_concurrency=concurrency,
        old_protocols=False,
    )
    targets = [Endpoint("127.0.0.1", port) for port in endpoints.ports]
    started = time.perf_counter()
    results = run_scan(targets, options, workers)
    elapsed = time.perf_counter() - started
    bad = [r for r in results if r.state.value != "ok"]
    if bad:
        raise SystemExit(f"in-process scan gave {len(bad)} bad results, e.g. {bad[0]}")
    return {"endpoints": len(results), "seconds": elapsed, "rate": len(results) / elapsed}


def bench_ssl_cert_check(endpoints: Endpoints, workdir: Path, sample: int) -> dict[str, Any] | None:
    tool = shutil.which("ssl-cert-check")
    if not tool:
        return None
    ports = endpoints.ports[:sample]
    targets = _targets_file(workdir, ports, "ssl-cert-check.txt")
    started = time.perf_counter()
    done = subprocess.run([tool, "-f", str(targets), "-x", "7"], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    valid = done.stdout.count("Valid")
    if valid != len(ports):
        raise SystemExit(f"ssl-cert-check reported {valid} valid of {len(ports)}:\n{done.stdout[-2000:]}")
    return {"endpoints": len(ports), "seconds": elapsed, "rate": len(ports) / elapsed}


def bench_check_ssl_cert(endpoints: Endpoints, sample: int) -> dict[str, Any] | None:
    if not os.access(CHECK_SSL_CERT, os.X_OK):
        return None
    ports = endpoints.ports[:sample]
    started = time.perf_counter()
    for port in ports:
        done = subprocess.run(
            [CHECK_SSL_CERT, "-H", "127.0.0.1", "-p", str(port), "--rootcert-file", str(endpoints.ca_file),
             "--ignore-ocsp", "--ignore-sct", "--ignore-maximum-validity", "-w", "7", "-c", "3"],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(
                f"check_ssl_cert failed on port {port}: {done.stdout[-2000:]}{done.stderr[-500:]}"
            )
    elapsed = time.perf_counter() - started
    return {"endpoints": len(ports), "seconds": elapsed, "rate": len(ports) / elapsed}


def bench_s_time(endpoints: Endpoints, processes: int, seconds: int) -> dict[str, Any]:
    commands = [
        ["openssl", "s_time", "-connect", f"127.0.0.1:{endpoints.ports[i % len(endpoints.ports)]}",
         "-new", "-time", str(seconds)]
        for i in range(processes)
    ]  # fmt: skip
    started = time.perf_counter()
    running = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands
    ]
    outputs = [p.communicate()[0] for p in running]
    elapsed = time.perf_counter() - started
    connections = 0
    for output in outputs:
        found = re.search(r"(\d+) connections in [\d.]+ real seconds", output) or re.search(
            r"(\d+) connections in", output
        )
        if not found:
            raise SystemExit(f"cannot read s_time output:\n{output}")
        connections += int(found.group(1))
    return {"endpoints": connections, "seconds": elapsed, "rate": connections / elapsed}


def bench_starttls_ceiling(endpoints: Endpoints, loops: int, seconds: int) -> dict[str, Any]:
    """`openssl s_client -starttls smtp` back to back in `loops` parallel loops: STARTTLS
    handshakes per second with nothing judged (a process per connection, as a cron check runs it)."""

    def one(port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
             "-servername", "127.0.0.1", "-CAfile", str(endpoints.ca_file), "-verify_return_error"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    started = time.perf_counter()
    deadline = started + seconds
    done = 0
    running = [one(endpoints.ports[i % len(endpoints.ports)]) for i in range(loops)]
    turn = loops
    while running:
        still = []
        for process in running:
            if process.poll() is None:
                still.append(process)
                continue
            if process.returncode != 0:
                raise SystemExit(f"openssl s_client -starttls smtp failed ({process.returncode})")
            done += 1
            if time.perf_counter() < deadline:
                still.append(one(endpoints.ports[turn % len(endpoints.ports)]))
                turn += 1
        running = still
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    return {"endpoints": done, "seconds": elapsed, "rate": done / elapsed}


# --- the report -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--endpoints", type=int, default=500)
    parser.add_argument("--server-procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workers", default="1,2", help="keychest scan --workers values to try")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--slow-sample", type=int, default=50, help="endpoints for ssl-cert-check")
    parser.add_argument("--check-ssl-cert-sample", type=int, default=10)
    parser.add_argument("--s-time-seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of keychest and s_time; best kept")
    parser.add_argument(
        "--starttls-endpoints", type=int, default=200, help="SMTP STARTTLS endpoints (0: none)"
    )
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    rows: list[tuple[str, dict[str, Any] | None]] = []
    with tempfile.TemporaryDirectory(prefix="keychest-bench-") as tmp:
        workdir = Path(tmp)
        endpoints = Endpoints(args.endpoints, args.server_procs, workdir)
        try:
            bench_keychest(endpoints, workdir, 1, args.concurrency)  # warm-up: page cache, imports
            # Rounds interleave the contenders and each keeps its best round, so that noise from
            # whatever else the machine is doing does not land on one contender only.
            best: dict[str, dict[str, Any]] = {}

            def keep(name: str, result: dict[str, Any]) -> None:
                if name not in best or result["rate"] > best[name]["rate"]:
                    best[name] = result

            for _ in range(args.rounds):
                for count in workers:
                    keep(
                        f"`keychest scan --workers {count}` (whole command)",
                        bench_keychest(endpoints, workdir, count, args.concurrency),
                    )
                for count in workers:
                    keep(
                        f"keychest scan --workers {count}, scan phase only",
                        bench_in_process(endpoints, count, args.concurrency),
                    )
                keep(
                    "`openssl s_time -new`, 4 processes (ceiling)",
                    bench_s_time(endpoints, 4, args.s_time_seconds),
                )
            rows.extend(best.items())
            ceiling = best["`openssl s_time -new`, 4 processes (ceiling)"]
            rows.append(
                ("`ssl-cert-check -f` (sample)", bench_ssl_cert_check(endpoints, workdir, args.slow_sample))
            )
            rows.append(
                (
                    "`check_ssl_cert`, one run per endpoint (sample)",
                    bench_check_ssl_cert(endpoints, args.check_ssl_cert_sample),
                )
            )
        finally:
            endpoints.stop()
        starttls_rows: list[tuple[str, dict[str, Any]]] = []
        if args.starttls_endpoints:
            (workdir / "smtp").mkdir()
            smtp = Endpoints(args.starttls_endpoints, args.server_procs, workdir / "smtp", smtp=True)
            try:
                best_starttls: dict[str, dict[str, Any]] = {}
                for _ in range(args.rounds):
                    for name, result in (
                        (
                            "`keychest scan smtp://...` (whole command)",
                            bench_keychest(smtp, workdir, 1, args.concurrency, "smtp"),
                        ),
                        (
                            "`openssl s_client -starttls smtp`, 4 loops in parallel (ceiling)",
                            bench_starttls_ceiling(smtp, 4, args.s_time_seconds),
                        ),
                    ):
                        if name not in best_starttls or result["rate"] > best_starttls[name]["rate"]:
                            best_starttls[name] = result
                starttls_rows = list(best_starttls.items())
            finally:
                smtp.stop()

    baseline = next((r for name, r in rows if "ssl-cert-check" in name and r), None)
    lines = [
        f"{args.endpoints} TLS endpoints on 127.0.0.1, each with its own ECDSA P-256 certificate, served by"
        f" {args.server_procs} Python/uvloop processes; {os.cpu_count()} CPUs shared by servers and clients;"
        f" Python {sys.version.split()[0]}; concurrency {args.concurrency}; best of {args.rounds} rounds.",
        "",
        "| tool | endpoints | seconds | endpoints/s | vs s_time ceiling | vs ssl-cert-check |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in rows:
        if result is None:
            lines.append(f"| {name} | not installed | | | | |")
            continue
        versus = f"{result['rate'] / baseline['rate']:.0f}x" if baseline else ""
        lines.append(
            f"| {name} | {result['endpoints']} | {result['seconds']:.2f} | {result['rate']:.0f}"
            f" | {result['rate'] / ceiling['rate']:.0%} | {versus} |"
        )
    if starttls_rows:
        starttls_ceiling = starttls_rows[-1][1]
        lines += [
            "",
            f"STARTTLS: {args.starttls_endpoints} SMTP endpoints on 127.0.0.1 (EHLO, STARTTLS, TLS).",
            "",
            "| tool | endpoints | seconds | endpoints/s | vs STARTTLS ceiling |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, result in starttls_rows:
            lines.append(
                f"| {name} | {result['endpoints']} | {result['seconds']:.2f} | {result['rate']:.0f}"
                f" | {result['rate'] / starttls_ceiling['rate']:.0%} |"
            )
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
