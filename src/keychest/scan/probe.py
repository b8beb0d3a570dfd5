"""One TLS handshake over one TCP connection to one address: the only network I/O of a scan.

Python's own ssl module (before 3.13) shows only the leaf of an unverified peer, so the
handshake is driven with pyOpenSSL over memory BIOs inside an asyncio protocol. That also
puts every byte the server sends through our hands, which is what lets a hostile server
be cut off: the overall deadline bounds time, `max_bytes` bounds what we read, and the
first bytes are checked to look like TLS before OpenSSL spends effort on them.

Nothing is judged here: the result is the raw DER chain as sent, or a classified error.
"""

from __future__ import annotations

import asyncio
import errno
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from keychest.scan.errors import ErrorKind, ScanError, ScanFailure
from keychest.scan.protocols import SCHEMES
from keychest.scan.starttls import Negotiation, negotiation
from keychest.scan.targets import ScanTarget, is_ip_literal

# TLS record content types a server may start with: alert (21) or handshake (22).
_FIRST_RECORD_TYPES = frozenset({0x15, 0x16})

# Every TLS alert by number (RFC 8446 6, RFC 5246 7.2), in OpenSSL's words.
TLS_ALERTS = {
    0: "close notify", 10: "unexpected message", 20: "bad record mac", 21: "decryption failed",
    22: "record overflow", 30: "decompression failure", 40: "handshake failure", 41: "no certificate",
    42: "bad certificate", 43: "unsupported certificate", 44: "certificate revoked",
    45: "certificate expired", 46: "certificate unknown", 47: "illegal parameter", 48: "unknown ca",
    49: "access denied", 50: "decode error", 51: "decrypt error", 60: "export restriction",
    70: "protocol version", 71: "insufficient security", 80: "internal error",
    86: "inappropriate fallback", 90: "user cancelled", 100: "no renegotiation",
    109: "missing extension", 110: "unsupported extension", 111: "certificate unobtainable",
    112: "unrecognized name", 113: "bad certificate status response", 114: "bad certificate hash value",
    115: "unknown psk identity", 116: "certificate required", 120: "no application protocol",
}  # fmt: skip
# The alert a server sent, whatever the library calls it: OpenSSL up to 3.1 says
# "sslv3 alert handshake failure", "tlsv1 alert unknown ca", "tlsv13 alert certificate
# required" or "tlsv1 unrecognized name"; 3.2 and later (the one bundled with
# `cryptography`) say "tls alert handshake failure"; an alert without a name is "alert number 40".
_ALERT_REASON = re.compile(
    r"\b(?:sslv3|tlsv1|tlsv13|tls|ssl)(?: alert)? ("
    + "|".join(sorted(TLS_ALERTS.values(), key=len, reverse=True))
    + r")\b|\balert number (\d+)"
)
# What a server that wants a client certificate answers when it gets none.
_CLIENT_CERT_ALERTS = frozenset(
    {
        "handshake failure",
        "bad certificate",
        "unsupported certificate",
        "certificate unknown",
        "certificate required",
    }
)
# And what it answers to a client certificate it does not accept.
_CLIENT_CERT_REFUSED = _CLIENT_CERT_ALERTS | {
    "unknown ca",
    "certificate expired",
    "certificate revoked",
    "access denied",
    "decrypt error",
}


def tls_alert(text: str) -> str | None:
    """The name of the TLS alert an OpenSSL error text reports, or None if it is not one."""
    match = _ALERT_REASON.search(text.lower())
    if match is None:
        return None
    if match.group(1):
        return match.group(1)
    number = int(match.group(2))
    return TLS_ALERTS.get(number, f"alert {number}")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    target: ScanTarget
    chain: tuple[bytes, ...]  # DER, in the order the server sent it (leaf first)
    error: ScanError | None
    tls_version: str | None = None
    cipher: str | None = None
    bytes_read: int = 0
    elapsed: float = 0.0  # seconds from connect start to handshake end (or failure)
    stapled_ocsp: bytes | None = None  # the OCSP response the server stapled, unverified

    @property
    def ok(self) -> bool:
        return self.error is None


def make_client_context() -> SSL.Context:
    """The one client context all probes share.

    Verification is off and the security level is 0 on purpose: we want to see and
    report a server's SHA-1 chain, 1024-bit key or TLS 1.0, not fail before we can.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    context.set_cipher_list(b"ALL:@SECLEVEL=0")
    # No session tickets: we never resume, and each ticket costs the server work.
    context.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_ocsp_client_callback(_keep_staple)
    return context


def _keep_staple(connection: SSL.Connection, staple: bytes, _data: object) -> bool:
    """Keep whatever was stapled: it is verified later (revocation), never trusted here."""
    connection.set_app_data(staple or None)
    return True


def _reasons(exc: SSL.Error) -> list[str]:
    reasons = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and item:
            reasons.append(str(item[-1]))
    return reasons or [str(exc) or type(exc).__name__]


def _classify_ssl_error(exc: SSL.Error) -> ScanFailure:
    return classify_reason("; ".join(_reasons(exc)))


def classify_reason(text: str) -> ScanFailure:
    """The error kind of an OpenSSL handshake failure, from its reason text."""
    lowered = text.lower()
    alert = tls_alert(text)
    if alert is not None:
        return ScanFailure(ErrorKind.TLS_ALERT, f"server sent TLS alert {alert} ({text})")
    if "excessive message size" in lowered:
        return ScanFailure(ErrorKind.TOO_LARGE, f"server's handshake message is too large: {text}")
    if any(word in lowered for word in ("wrong version number", "packet length too long", "record layer")):
        return ScanFailure(ErrorKind.GARBAGE, f"server does not speak TLS: {text}")
    return ScanFailure(ErrorKind.HANDSHAKE, f"TLS handshake failed: {text}")


class _HandshakeProtocol(asyncio.Protocol):
    def __init__(
        self,
        connection: SSL.Connection,
        max_bytes: int,
        done: asyncio.Future[None],
        starttls: Negotiation | None = None,
    ) -> None:
        self.connection = connection
        self.max_bytes = max_bytes
        self.done = done
        self.starttls = starttls  # the plain-text exchange to finish before TLS, if any
        self.transport: asyncio.Transport | None = None
        self.bytes_read = 0
        self.prefix = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave like one.
        self.transport = cast(asyncio.Transport, transport)
        self._guarded(self._begin)

    def _begin(self) -> None:
        if self.starttls is None:
            self._step()
            return
        assert self.transport is not None
        first = self.starttls.start()
        if first:
            self.transport.write(first)

    def _negotiate(self, data: bytes) -> None:
        assert self.starttls is not None and self.transport is not None
        try:
            reply = self.starttls.receive(data)
        except ScanFailure as failure:
            self._fail(failure)
            return
        if reply:
            self.transport.write(reply)
        if self.starttls.ready:
            self.starttls = None
            self._step()

    def data_received(self, data: bytes) -> None:
        self._guarded(self._received, data)

    def _guarded(self, step: Callable[..., None], *args: bytes) -> None:
        # Whatever goes wrong in a callback must end this probe now; an exception escaping
        # into the event loop would only be logged and leave the probe to its time-out.
        try:
            step(*args)
        except Exception as exc:
            self._fail(ScanFailure(ErrorKind.HANDSHAKE, f"handshake aborted: {type(exc).__name__}: {exc}"))

    def _received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.bytes_read += len(data)
        if self.starttls is not None:
            self._negotiate(data)
            return
        if self.bytes_read > self.max_bytes:
            self._fail(
                ScanFailure(
                    ErrorKind.TOO_LARGE, f"server sent more than {self.max_bytes} bytes in the handshake"
                )
            )
            return
        if len(self.prefix) < 3:
            self.prefix += data[: 3 - len(self.prefix)]
            if not self._looks_like_tls(self.prefix):
                shown = self.prefix + data[len(self.prefix) : 40]
                self._fail(ScanFailure(ErrorKind.GARBAGE, f"server does not speak TLS; it sent {shown!r}"))
                return
        try:
            self.connection.bio_write(data)
        except SSL.Error as exc:
            self._fail(_classify_ssl_error(exc))
            return
        self._step()

    @staticmethod
    def _looks_like_tls(prefix: bytes) -> bool:
        if prefix[0] not in _FIRST_RECORD_TYPES:
            return False
        # Record version major is 3 for SSL 3.0 through TLS 1.3.
        return len(prefix) < 2 or prefix[1] == 0x03

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            detail = f": {exc}" if exc else ""
            if self.starttls is not None:
                self.done.set_exception(
                    ScanFailure(
                        ErrorKind.STARTTLS_REFUSED,
                        f"server closed the connection before its STARTTLS go-ahead{detail}",
                    )
                )
                return
            self.done.set_exception(
                ScanFailure(ErrorKind.HANDSHAKE, f"server closed the connection during the handshake{detail}")
            )

    def _step(self) -> None:
        try:
            self.connection.do_handshake()
        except SSL.WantReadError:
            self._flush()
        except SSL.Error as exc:
            # An alert we were sent or are sending is in the BIO; let it out, then fail.
            self._flush()
            self._fail(_classify_ssl_error(exc))
        else:
            self._flush()
            if not self.done.done():
                self.done.set_result(None)

    def _flush(self) -> None:
        assert self.transport is not None
        while True:
            try:
                data = self.connection.bio_read(65536)
            except SSL.WantReadError:
                return
            if not data:
                return
            self.transport.write(data)

    def _fail(self, failure: ScanFailure) -> None:
        if not self.done.done():
            self.done.set_exception(failure)
        if self.transport is not None:
            self.transport.abort()


class TLSClient:
    """Runs probes. Build one per scanner: it owns the shared OpenSSL context."""

    def __init__(
        self,
        timeout: float,
        max_bytes: int = 256 * 1024,
        client_cert: str | None = None,
        client_key: str | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.context = make_client_context()
        # For the one extra handshake that asks whether TLS 1.0 or 1.1 is still accepted.
        self.old_context = make_client_context()
        self.old_context.set_min_proto_version(SSL.TLS1_VERSION)
        self.old_context.set_max_proto_version(SSL.TLS1_1_VERSION)
        self.client_cert = client_cert
        if client_cert:
            # Offered to servers that ask (mutual TLS); a bad pair is the user's error, at once.
            try:
                for context in (self.context, self.old_context):
                    context.use_certificate_chain_file(client_cert)
                    context.use_privatekey_file(client_key or client_cert)
                    context.check_privatekey()
            except SSL.Error as exc:
                raise ValueError(
                    f"cannot use client certificate {client_cert}: {'; '.join(_reasons(exc))}"
                ) from None

    async def probe(self, target: ScanTarget, *, old: bool = False) -> ProbeResult:
        """Connect to `target.ip` (never re-resolving `target.host`) and shake hands with SNI;
        with `old`, offering only TLS 1.0 and 1.1."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        connection = SSL.Connection(self.old_context if old else self.context, None)
        connection.set_connect_state()
        connection.request_ocsp()
        if not is_ip_literal(target.host):
            connection.set_tlsext_host_name(target.host.encode("ascii"))
        done: asyncio.Future[None] = loop.create_future()
        dialect = SCHEMES[target.protocol].starttls
        starttls = negotiation(dialect, target.host) if dialect else None
        protocol = _HandshakeProtocol(connection, self.max_bytes, done, starttls)
        transport: asyncio.Transport | None = None
        phase = "connect"

        def result(
            error: ScanError | None,
            chain: tuple[bytes, ...] = (),
            tls_version: str | None = None,
            cipher: str | None = None,
        ) -> ProbeResult:
            staple = connection.get_app_data() if error is None else None
            return ProbeResult(
                target,
                chain,
                error,
                tls_version,
                cipher,
                protocol.bytes_read,
                time.monotonic() - started,
                staple if isinstance(staple, bytes) else None,
            )

        try:
            async with asyncio.timeout(self.timeout):
                transport, _ = await loop.create_connection(lambda: protocol, target.ip, target.port)
                phase = "handshake"
                await done
                phase = "done"
        except TimeoutError:
            what = "TCP connect" if phase == "connect" else "TLS handshake"
            if phase != "connect" and protocol.starttls is not None:
                what = f"{protocol.starttls.name} STARTTLS negotiation"
            return result(ScanError(ErrorKind.TIMEOUT, f"{what} did not finish within {self.timeout:g}s"))
        except ScanFailure as failure:
            return self._failed(failure.error, connection, result)
        except ConnectionRefusedError:
            return result(ScanError(ErrorKind.REFUSED, "connection refused"))
        except OSError as exc:
            kind = ErrorKind.REFUSED if exc.errno == errno.ECONNREFUSED else ErrorKind.UNREACHABLE
            return result(ScanError(kind, f"cannot connect: {exc.strerror or exc}"))
        finally:
            # On any failure (a time-out cancels `done` too, so its state tells nothing) the
            # socket must go now, not when the server finally gives up.
            if transport is not None and phase != "done" and not transport.is_closing():
                transport.abort()

        assert transport is not None
        peer_chain = connection.get_peer_cert_chain(as_cryptography=True) or []
        chain = tuple(cert.public_bytes(Encoding.DER) for cert in peer_chain)
        version = connection.get_protocol_version_name()
        cipher = connection.get_cipher_name()
        # No close_notify: a plain FIN is enough to end a connection that carried no data,
        # and it spares both sides a TLS record per scan.
        transport.close()
        if not chain:
            return result(ScanError(ErrorKind.HANDSHAKE, "server sent no certificate"))
        return result(None, chain, version, cipher)

    def _failed(
        self,
        error: ScanError,
        connection: SSL.Connection,
        result: Callable[..., ProbeResult],
    ) -> ProbeResult:
        """A failed handshake; but a TLS 1.2 server that wants a client certificate has sent
        its own before refusing us, and that certificate is still reported (as check_ssl_cert
        and sslyze do), with `client_cert_required` when we had none to give."""
        alert = tls_alert(error.message) if error.kind == ErrorKind.TLS_ALERT else None
        if alert not in (_CLIENT_CERT_ALERTS if self.client_cert is None else _CLIENT_CERT_REFUSED):
            return result(error)
        peer_chain = connection.get_peer_cert_chain(as_cryptography=True) or []
        chain = tuple(cert.public_bytes(Encoding.DER) for cert in peer_chain)
        if not chain:
            return result(error)
        if self.client_cert is None:
            error = ScanError(
                ErrorKind.CLIENT_CERT_REQUIRED,
                f"server requires a client certificate (it answered ours, none, with TLS alert {alert});"
                " give one with --client-cert and --client-key",
            )
        else:
            error = ScanError(
                ErrorKind.TLS_ALERT, f"server refused our client certificate: TLS alert {alert}"
            )
        return result(error, chain)
