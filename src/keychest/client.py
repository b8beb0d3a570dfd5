"""A Python client of the line API (used by the CLI, the tests and the benchmarks)."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class LineReply:
    ok: bool
    code: int
    text: str
    data: str | None

    @classmethod
    def parse(cls, raw: str) -> LineReply:
        data = None
        status = ""
        for line in raw.splitlines():
            if line.startswith("data "):
                data = line[5:]
            elif line.startswith("status "):
                status = line
        parts = status.split(" ", 3)
        if len(parts) < 3:
            raise ValueError(f"no status line in {raw!r}")
        return cls(parts[1] == "ok", int(parts[2]), parts[3] if len(parts) > 3 else "", data)


class LineClient:
    """One persistent connection; a request is one line, a reply ends with a status line."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""

    def request(self, command: str, **args: str) -> LineReply:
        line = " ".join(["command", command, *(f"{k} {v}" for k, v in args.items())])
        self._sock.sendall(line.encode("ascii") + b"\n")
        while b"\nstatus " not in b"\n" + self._buffer or not self._buffer.endswith(b"\n"):
            chunk = self._sock.recv(4096)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buffer += chunk
        raw, self._buffer = self._buffer.decode("ascii", "replace"), b""
        return LineReply.parse(raw)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_server(text: str, default_port: int = 10023) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port
