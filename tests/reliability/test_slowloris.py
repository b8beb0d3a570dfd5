"""Idle or trickling connections must not slow down the clients that behave.

Line API: 2,000 connections from 16 loopback addresses (125 each, under the per-address cap).
Half say nothing at all; the other half send one byte now and then, never a newline.
Meanwhile a normal client opens a fresh connection per request, as bash does, and must get
its answer within 100 ms: `ping` (no database) and `add` (a durable write) are sampled many
times, and the median and the 90th percentile must stay under 100 ms on this shared 2-core
machine.

HTTP: 200 slowloris connections (silent, headers a byte at a time, a body that never
completes) while `/healthz` is asked on fresh connections: answers stay quick, and the server
closes every slow connection once its request deadline (--http-request-timeout) passed.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time

import pytest

from tests.reliability.support import LIMITS_OFF, raise_nofile, request_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

IDLE = 1000
TRICKLING = 1000
# Hogs connect from these loopback addresses, so that no one address reaches the cap.
HOG_SOURCES = [f"127.0.1.{i}" for i in range(1, 17)]
SAMPLES = 60
BOUND_S = 0.100


def one_request(port: int, line: bytes) -> tuple[float, bytes]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line)
        answer = b""
        while not (answer.endswith(b"\n") and b"status " in answer):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return time.perf_counter() - started, answer


def test_normal_clients_answered_quickly_under_slowloris(server_factory) -> None:  # type: ignore[no-untyped-def]
    raise_nofile(IDLE + TRICKLING + 1024)  # before the server starts: it inherits the limit
    server = server_factory(*LIMITS_OFF, "--role", "api", "--idle-timeout", "120")
    key = request_key(server.line_port)
    hogs: list[socket.socket] = []
    stop = threading.Event()
    try:
        for n in range(IDLE + TRICKLING):
            source = (HOG_SOURCES[n % len(HOG_SOURCES)], 0)
            hogs.append(
                socket.create_connection(("127.0.0.1", server.line_port), timeout=10, source_address=source)
            )
        trickling = hogs[IDLE:]

        def trickle() -> None:
            # One byte per connection per second, spread over the second: a slow, endless line.
            while not stop.is_set():
                for sock in trickling:
                    if stop.is_set():
                        return
                    with contextlib.suppress(OSError):
                        sock.send(b"x")
                    time.sleep(1.0 / len(trickling))

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        time.sleep(2)  # every hog connected and the trickle going
        pings, adds = [], []
        for n in range(SAMPLES):
            took, answer = one_request(server.line_port, b"command ping\n")
            assert b"status ok 200" in answer, answer
            pings.append(took)
            took, answer = one_request(
                server.line_port, f"command add apikey {key} domain s{n}.slowloris.test\n".encode()
            )
            assert b"status ok 200" in answer, answer
            adds.append(took)
            time.sleep(0.05)
        # The hogs are still there: the server kept them all open (no 503, no idle close).
        alive = sum(1 for sock in hogs if _open(sock))
    finally:
        stop.set()
        for sock in hogs:
            sock.close()

    def summary(values: list[float]) -> str:
        ordered = sorted(values)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        median = statistics.median(ordered)
        return f"median {median * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"

    print(f"{alive} hogs still open; ping: {summary(pings)}; add: {summary(adds)}")
    assert alive >= (IDLE + TRICKLING) * 0.99
    for name, values in (("ping", pings), ("add", adds)):
        ordered = sorted(values)
        assert statistics.median(ordered) < BOUND_S, (name, summary(values))
        assert ordered[int(0.9 * (len(ordered) - 1))] < BOUND_S, (name, summary(values))


def _open(sock: socket.socket) -> bool:
    """True while the server has not closed this connection (and not answered it with 503)."""
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    # Trickled bytes make "requests" the server answers with an error status: still open.
    return bool(data) and b"503" not in data


HTTP_SLOW = 200


def http_get(port: int, path: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return time.perf_counter() - started, answer


def test_http_slowloris_is_cut_off_and_does_not_pin_the_server(server_factory) -> None:  # type: ignore[no-untyped-def]
    raise_nofile(HTTP_SLOW + 1024)
    server = server_factory("--role", "api", "--http-request-timeout", "2")
    slow: list[socket.socket] = []
    stop = threading.Event()
    try:
        for n in range(HTTP_SLOW):
            sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
            kind = n % 3
            if kind == 1:  # headers that never end
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            elif kind == 2:  # a body that never completes
                sock.sendall(
                    b"POST /api/v1.0/servers/add HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
                )
            slow.append(sock)
        opened = time.monotonic()

        def trickle() -> None:
            # One more header byte per connection every half second: never a whole request.
            while not stop.is_set():
                for sock in slow[1::3]:
                    with contextlib.suppress(OSError):
                        sock.send(b"x")
                stop.wait(0.5)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        took = []
        for _ in range(20):
            elapsed, answer = http_get(server.http_port, "/healthz")
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            took.append(elapsed)
        # Every slow connection is closed by the server (a positive event per socket): the
        # deadline is 2 s; allow for a loaded machine.
        still_open = []
        for sock in slow:
            sock.settimeout(max(0.1, opened + 15 - time.monotonic()))
            try:
                while sock.recv(4096):
                    pass
            except TimeoutError:
                still_open.append(sock)
            except OSError:
                pass
        closed_within = time.monotonic() - opened
    finally:
        stop.set()
        for sock in slow:
            sock.close()
    print(
        f"healthz median {statistics.median(took) * 1000:.1f} ms; "
        f"slow connections closed within {closed_within:.1f} s"
    )
    assert not still_open, f"{len(still_open)} of {HTTP_SLOW} slow connections were never closed"
    assert statistics.median(took) < BOUND_S
    # And the server still answers afterwards.
    assert http_get(server.http_port, "/healthz")[1].startswith(b"HTTP/1.1 200 ")
