"""`keychest scan` output reaches a slow or failing reader whole, or the exit status says not."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import termios
import time

from .tls_servers import free_port

PIPE_CAPACITY = 65536


def _targets(count: int) -> list[str]:
    # Refused at once (nothing listens), yet each result is a full JSON object: together well
    # over one pipe's capacity.
    port = free_port(["127.0.0.1"])
    return [f"smtp://127.0.0.{i}:{port}" for i in range(1, count + 1)]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from keychest.cli import main; main()", "scan", *args]


def test_json_reaches_a_slow_reader_of_a_non_blocking_pipe_whole() -> None:
    """The seen failure: exactly 64 KiB, then exit as if all was said. A parent (or another
    process sharing the pipe) may leave it O_NONBLOCK, and under PYTHONUNBUFFERED a short
    write was dropped silently by sys.stdout."""
    targets = _targets(150)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["--json", "--allow-private-targets", "--timeout", "5", *targets]
    with subprocess.Popen(_command(*args), stdout=write_end, stderr=subprocess.PIPE, env=env) as process:
        os.close(write_end)
        # The slow reader: read nothing until the pipe is full (or the writer gave up).
        deadline = time.monotonic() + 60
        buffered = bytearray(4)
        while time.monotonic() < deadline and process.poll() is None:
            fcntl.ioctl(read_end, termios.FIONREAD, buffered)
            if int.from_bytes(buffered, sys.byteorder) >= PIPE_CAPACITY:
                break
            time.sleep(0.02)
        chunks = []
        while chunk := os.read(read_end, 1 << 16):
            chunks.append(chunk)
        os.close(read_end)
        assert process.stderr is not None
        stderr = process.stderr.read().decode()
        status = process.wait(timeout=60)
    output = b"".join(chunks)
    assert len(output) > PIPE_CAPACITY, stderr
    assert [row["host"] for row in json.loads(output)] == [t.split("//")[1].split(":")[0] for t in targets]
    assert status == 2, stderr  # every target refused: an error, as the output says


def test_output_that_cannot_be_written_is_exit_status_2() -> None:
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            _command("--allow-private-targets", "--timeout", "5", *_targets(3)),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "keychest scan: cannot write the results: [Errno 28] No space left on device"
    ]
