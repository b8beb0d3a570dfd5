"""Line API throughput and latency, against a bare asyncio server measured in the same run.

    .venv/bin/python bench/line_api.py [--requests 20000] [--concurrency 200] [--db URL]

Each request opens its own TCP connection, as a bash client does (`exec 3<> /dev/tcp/...`),
sends one line, reads the answer and closes. The load generator runs in its own process
(uvloop), with `--concurrency` requests in flight. Servers:

- bare: asyncio streams on uvloop answering a fixed status line without doing any work:
  the ceiling for this machine, client and kernel;
- keychest: `keychest serve --role api` on SQLite (WAL, synchronous=FULL) in a temporary
  folder (or on --db), with abuse limits switched off so the generator is not refused.

Prints a Markdown table: requests/s, p50 and p99 latency, and the ratio to the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netutil import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent


# --- the bare ceiling -----------------------------------------------------------------------


def bare_server(port: int) -> None:
    import uvloop

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readline():
                writer.write(b"status ok 200 pong\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# --- the load generator ---------------------------------------------------------------------


# Source addresses for the generator's connections: 10,000s of connections a second from one
# address exhaust its ephemeral ports (TIME_WAIT), and connect() then stalls in the client,
# which would show up as server latency. Loopback answers on all of 127.0.0.0/8.
SOURCES = [f"127.0.0.{n}" for n in range(2, 34)]


async def one_request(port: int, line: bytes, source: str) -> tuple[float, bool]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(line)
        await writer.drain()
        answer = b""
        while b"status " not in answer or not answer.endswith(b"\n"):
            chunk = await reader.read(1000)
            if not chunk:
                break
            answer += chunk
    finally:
        writer.close()
    return time.perf_counter() - started, b"status ok" in answer


async def drive(port: int, lines: list[bytes], concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    queue = iter(lines)

    async def worker(source: str) -> None:
        nonlocal failures
        for line in queue:
            try:
                took, ok = await one_request(port, line, source)
            except OSError:
                failures += 1
                continue
            latencies.append(took)
            failures += not ok

    started = time.perf_counter()
    await asyncio.gather(*(worker(SOURCES[n % len(SOURCES)]) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(lines),
        "rate": len(lines) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "failures": failures,
    }


def generator(port: int, lines: list[bytes], concurrency: int, out: multiprocessing.Queue) -> None:
    import uvloop

    out.put(uvloop.run(drive(port, lines, concurrency)))


def measure(port: int, lines: list[bytes], concurrency: int) -> dict[str, float]:
    """Run the generator in a process of its own, so it does not share the server's core."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    proc = multiprocessing.Process(target=generator, args=(port, lines, concurrency, results))
    proc.start()
    result = results.get()
    proc.join()
    return result


def request_key(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"command apikey\n")
        answer = b""
        while b"status" not in answer:
            answer += sock.recv(1000)
    return answer.split()[1].decode()


def median_row(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per row; the median is shown")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--db", default=None, help="database URL (default: SQLite in a temp folder)")
    args = parser.parse_args()
    n, conc = args.requests, args.concurrency

    bare_port = free_port()
    bare = multiprocessing.Process(target=bare_server, args=(bare_port,), daemon=True)
    bare.start()
    with tempfile.TemporaryDirectory(prefix="keychest-bench-") as tmp:
        port, http = free_port(), free_port()
        db = args.db or f"sqlite:///{tmp}/keychest.db"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keychest",
                "serve",
                "--role",
                "api",
                "--db",
                db,
                "--data-dir",
                tmp,
                "--line-listen",
                f"127.0.0.1:{port}",
                "--http-listen",
                f"127.0.0.1:{http}",
                "--keys-per-ip-per-hour",
                "0",
                "--apikey-burst",
                "0",
                "--domains-per-unconfirmed-key",
                "0",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
        )
        try:
            wait_port(bare_port)
            wait_port(port)
            measure(bare_port, [b"command ping\n"] * 2000, conc)  # warm-up
            measure(port, [b"command ping\n"] * 2000, conc)
            key = request_key(port)
            names = [
                "bare uvloop (ceiling)",
                "keychest ping",
                "keychest apikey",
                "keychest add (new domains, durable)",
            ]
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
            # Rounds interleave the rows, so that a noisy neighbour hurts all of them alike.
            for round_no in range(args.rounds):
                lines = [
                    f"command add apikey {key} domain d{round_no}-{i}.bench.example\n".encode()
                    for i in range(n)
                ]
                samples[names[0]].append(measure(bare_port, [b"command ping\n"] * n, conc))
                samples[names[1]].append(measure(port, [b"command ping\n"] * n, conc))
                samples[names[2]].append(measure(port, [b"command apikey\n"] * n, conc))
                samples[names[3]].append(measure(port, lines, conc))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
            bare.terminate()
            bare.join()

    rows = [(name, median_row(samples[name])) for name in names]
    ceiling = rows[0][1]["rate"]
    print(
        f"\n{n} requests per measurement, median of {args.rounds} interleaved rounds, {conc} in flight, "
        f"one connection per request; {os.cpu_count()} cores; "
        f"database {args.db or 'SQLite (WAL, synchronous=FULL)'}\n"
    )
    print("| server | requests/s | of ceiling | p50 ms | p99 ms | failures |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        print(
            f"| {name} | {r['rate']:.0f} | {r['rate'] / ceiling:.0%} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['failures']:.0f} |"
        )


if __name__ == "__main__":
    main()
