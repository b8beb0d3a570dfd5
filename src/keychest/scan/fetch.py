"""A small guarded HTTP(S) GET for CRLs, OCSP and ACME renewal information.

Every address is checked by the private-address guard before we connect to it (a CA URL
in a hostile certificate is as much a server-side request forgery vector as a scanned
name), the whole exchange shares one deadline, and the body is cut off at `max_bytes`.
Failures are `FetchError`s with a sentence for the user; nothing here judges a body.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from keychest.scan.errors import ScanFailure
from keychest.scan.guard import blocked_message, check_address
from keychest.scan.resolve import Resolver

USER_AGENT = "keychest"


class FetchError(Exception):
    """Why a fetch gave no usable answer, in words fit for a report."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes


@dataclass(slots=True)
class Fetcher:
    """Shared by one scanner: DNS through its resolver, TLS through one default context."""

    resolver: Resolver
    timeout: float = 10.0
    max_bytes: int = 10 * 1024 * 1024
    allow_private_targets: bool = False
    ca_file: str | None = None
    requests: int = 0  # made so far, for the figures in docs/renewal.md
    _tls: ssl.SSLContext | None = field(default=None, repr=False)

    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
            if self.ca_file:
                self._tls.load_verify_locations(self.ca_file)
        return self._tls

    async def get(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        method: str = "GET",
        body: bytes = b"",
    ) -> Response:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(url, dict(headers or {}), method, body)
        except TimeoutError:
            raise FetchError(f"{url}: no complete answer within {self.timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise FetchError(f"{url}: {exc}") from None

    async def _exchange(self, url: str, headers: dict[str, str], method: str, body: bytes) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError(f"{url}: not an http or https URL")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self.resolver.resolve(host)
        except ScanFailure as failure:
            raise FetchError(f"{url}: {failure.error.message}") from None
        last: Exception | None = None
        for ip in addresses:
            blocked = check_address(ip, self.allow_private_targets)
            if blocked:
                last = FetchError(f"{url}: {blocked_message(ip, blocked)}")
                continue
            try:
                reader, writer = await asyncio.open_connection(
                    ip,
                    port,
                    ssl=self.tls_context() if parts.scheme == "https" else None,
                    server_hostname=host if parts.scheme == "https" else None,
                )
            except OSError as exc:
                last = exc
                continue
            self.requests += 1
            try:
                return await self._request(reader, writer, url, host, port, headers, method, body)
            finally:
                writer.close()
        if isinstance(last, FetchError):
            raise last
        raise FetchError(f"{url}: cannot connect: {last}")

    async def _request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        url: str,
        host: str,
        port: int,
        headers: dict[str, str],
        method: str,
        body: bytes,
    ) -> Response:
        split = urlsplit(url)
        target = split.path or "/"
        if split.query:
            target += "?" + split.query
        default_port = 443 if split.scheme == "https" else 80
        authority = host if port == default_port else f"{host}:{port}"
        if ":" in host:
            authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}", f"User-Agent: {USER_AGENT}"]
        lines += ["Connection: close", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise FetchError(f"{split.geturl()}: response headers too long") from None
        except asyncio.IncompleteReadError:
            raise FetchError(f"{split.geturl()}: connection closed before a response") from None
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
            raise FetchError(f"{split.geturl()}: not an HTTP response")
        response_headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                response_headers[name.strip().lower()] = value.strip()
        status = int(fields[1])
        if method == "HEAD" or status in (204, 304):
            return Response(status, response_headers, b"")
        data = await self._body(reader, response_headers, split.geturl())
        return Response(status, response_headers, data)

    async def _body(self, reader: asyncio.StreamReader, headers: Mapping[str, str], url: str) -> bytes:
        too_large = FetchError(f"{url}: answer larger than {self.max_bytes} bytes")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = bytearray()
            while True:
                size_line = await reader.readline()
                try:
                    size = int(size_line.split(b";")[0].strip() or b"x", 16)
                except ValueError:
                    raise FetchError(f"{url}: malformed chunked body") from None
                if size == 0:
                    return bytes(chunks)
                if len(chunks) + size > self.max_bytes:
                    raise too_large
                chunks += await reader.readexactly(size)
                await reader.readline()
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise FetchError(f"{url}: malformed Content-Length")
            if int(length) > self.max_bytes:
                raise too_large
            try:
                return await reader.readexactly(int(length))
            except asyncio.IncompleteReadError:
                raise FetchError(f"{url}: connection closed in the middle of the body") from None
        data = await reader.read(self.max_bytes + 1)
        while data and len(data) <= self.max_bytes:
            more = await reader.read(self.max_bytes + 1 - len(data))
            if not more:
                break
            data += more
        if len(data) > self.max_bytes:
            raise too_large
        return data
