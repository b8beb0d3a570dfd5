"""STARTTLS negotiations as small sans-IO state machines, one per protocol: bytes in,
bytes out, no sockets and no clock, so each is tested on its own and the probe (the one
place that does I/O) drives them the same way.

`start()` gives what the client says first (often nothing: most servers speak first);
`receive(data)` gives what to send next and sets `ready` once the server has said
go-ahead, after which the TLS handshake begins on the same connection. A refusal raises
`ScanFailure(starttls_refused)`, anything that is not the protocol `garbage`; what a
server may send before its go-ahead is capped (a 1 MB banner is garbage long before the
probe's byte cap), and the probe's deadline bounds the time.
"""

from __future__ import annotations

import re

from keychest.scan.errors import ErrorKind, ScanFailure

MAX_LINE = 4096
MAX_TOTAL = 64 * 1024
# Our EHLO name: a reserved, syntactically valid domain (RFC 2606), so strict HELO checks pass.
CLIENT_NAME = "keychest.invalid"


def _refused(message: str) -> ScanFailure:
    return ScanFailure(ErrorKind.STARTTLS_REFUSED, message)


def _garbage(message: str) -> ScanFailure:
    return ScanFailure(ErrorKind.GARBAGE, message)


def _shown(data: bytes) -> str:
    return repr(data[:80])


class Negotiation:
    """Base: a buffer with caps; subclasses implement `_consume` over the buffer."""

    name = ""

    def __init__(self) -> None:
        self.buffer = b""
        self.total = 0
        self.ready = False

    def start(self) -> bytes:
        return b""

    def receive(self, data: bytes) -> bytes:
        if self.ready:
            raise _garbage("server sent data after its STARTTLS go-ahead, before TLS")
        self.total += len(data)
        if self.total > MAX_TOTAL:
            raise _garbage(f"server sent more than {MAX_TOTAL} bytes before the STARTTLS go-ahead")
        self.buffer += data
        out = self._consume()
        if self.ready and self.buffer:
            # Bytes after the go-ahead cannot be TLS (the client speaks first): injected or broken.
            raise _garbage(f"server sent data after its STARTTLS go-ahead: {_shown(self.buffer)}")
        return out

    def _consume(self) -> bytes:
        raise NotImplementedError


class _LineNegotiation(Negotiation):
    """Text protocols: complete lines are handed to `_line`, one at a time."""

    def _consume(self) -> bytes:
        out = b""
        while not self.ready:
            line, sep, rest = self.buffer.partition(b"\n")
            if not sep:
                if len(self.buffer) > MAX_LINE:
                    raise _garbage(f"server sent a line longer than {MAX_LINE} bytes: {_shown(self.buffer)}")
                break
            self.buffer = rest
            if len(line) > MAX_LINE:
                raise _garbage(f"server sent a line longer than {MAX_LINE} bytes: {_shown(line)}")
            out += self._line(line.rstrip(b"\r"))
        return out

    def _line(self, line: bytes) -> bytes:
        raise NotImplementedError


_REPLY = re.compile(rb"([0-9]{3})([ -]?)(.*)")


class _ReplyCodes(_LineNegotiation):
    """SMTP and FTP replies: `code-text` continues, `code text` ends a reply."""

    lenient_continuation = False  # FTP allows free text inside a multi-line reply

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.lines: list[bytes] = []
        self.open_code: bytes | None = None

    def _line(self, line: bytes) -> bytes:
        match = _REPLY.fullmatch(line)
        ends = match is not None and match.group(1) == self.open_code and match.group(2) != b"-"
        if self.open_code is not None and self.lenient_continuation and not ends:
            self.lines.append(line)
            return b""
        if match is None:
            raise _garbage(f"not a {self.name} reply: {_shown(line)}")
        code, sep, text = match.groups()
        self.lines.append(text)
        if sep == b"-":
            self.open_code = code
            return b""
        self.open_code = None
        lines, self.lines = self.lines, []
        return self._reply(int(code), lines)

    def _reply(self, code: int, lines: list[bytes]) -> bytes:
        raise NotImplementedError


class SMTP(_ReplyCodes):
    name = "SMTP"

    def _reply(self, code: int, lines: list[bytes]) -> bytes:
        text = (lines[-1] if lines else b"").decode("utf-8", "replace")
        if self.step == 0:
            if code != 220:
                raise _refused(f"SMTP server refused the session: {code} {text}")
            self.step = 1
            return f"EHLO {CLIENT_NAME}\r\n".encode()
        if self.step == 1:
            if code != 250:
                raise _refused(f"SMTP server refused EHLO: {code} {text}")
            if not any(line.upper().split(b" ", 1)[0] == b"STARTTLS" for line in lines[1:]):
                raise _refused("SMTP server does not offer STARTTLS")
            self.step = 2
            return b"STARTTLS\r\n"
        if code != 220:
            raise _refused(f"SMTP server refused STARTTLS: {code} {text}")
        self.ready = True
        return b""


class FTP(_ReplyCodes):
    name = "FTP"
    lenient_continuation = True

    def _reply(self, code: int, lines: list[bytes]) -> bytes:
        text = (lines[-1] if lines else b"").decode("utf-8", "replace")
        if self.step == 0:
            if code != 220:
                raise _refused(f"FTP server refused the session: {code} {text}")
            self.step = 1
            return b"AUTH TLS\r\n"
        if code != 234:
            raise _refused(f"FTP server refused AUTH TLS: {code} {text}")
        self.ready = True
        return b""


class IMAP(_LineNegotiation):
    name = "IMAP"
    TAG = b"K1"

    def __init__(self) -> None:
        super().__init__()
        self.greeted = False

    def _line(self, line: bytes) -> bytes:
        word = line.split(b" ", 2)
        if not self.greeted:
            if word[0] != b"*" or len(word) < 2:
                raise _garbage(f"not an IMAP greeting: {_shown(line)}")
            status = word[1].upper()
            if status != b"OK":
                raise _refused(f"IMAP server refused the session: {line[:200].decode('utf-8', 'replace')}")
            self.greeted = True
            return self.TAG + b" STARTTLS\r\n"
        if word[0] == b"*":
            return b""  # untagged data (capabilities) before our answer
        if word[0] != self.TAG or len(word) < 2:
            raise _garbage(f"not an IMAP answer: {_shown(line)}")
        if word[1].upper() != b"OK":
            raise _refused(f"IMAP server refused STARTTLS: {line[:200].decode('utf-8', 'replace')}")
        self.ready = True
        return b""


class POP3(_LineNegotiation):
    name = "POP3"

    def __init__(self) -> None:
        super().__init__()
        self.greeted = False

    def _line(self, line: bytes) -> bytes:
        if line.startswith(b"-ERR"):
            what = "STLS" if self.greeted else "the session"
            raise _refused(f"POP3 server refused {what}: {line[:200].decode('utf-8', 'replace')}")
        if not line.startswith(b"+OK"):
            raise _garbage(f"not a POP3 answer: {_shown(line)}")
        if not self.greeted:
            self.greeted = True
            return b"STLS\r\n"
        self.ready = True
        return b""


class Sieve(_LineNegotiation):
    """ManageSieve (RFC 5804): capability lines, then OK; STARTTLS, then OK."""

    name = "ManageSieve"

    def __init__(self) -> None:
        super().__init__()
        self.greeted = False
        self.offered = False

    def _line(self, line: bytes) -> bytes:
        upper = line.upper()
        if upper.startswith(b'"'):
            if upper.startswith(b'"STARTTLS"'):
                self.offered = True
            return b""
        status = upper.split(b" ", 1)[0]
        if status in (b"NO", b"BYE"):
            raise _refused(f"ManageSieve server refused: {line[:200].decode('utf-8', 'replace')}")
        if status != b"OK":
            raise _garbage(f"not a ManageSieve answer: {_shown(line)}")
        if not self.greeted:
            self.greeted = True
            if not self.offered:
                raise _refused("ManageSieve server does not offer STARTTLS")
            return b"STARTTLS\r\n"
        self.ready = True
        return b""


class Postgres(Negotiation):
    """PostgreSQL's SSLRequest: eight bytes out, one byte back ('S' yes, 'N' no)."""

    name = "PostgreSQL"
    SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")

    def start(self) -> bytes:
        return self.SSL_REQUEST

    def _consume(self) -> bytes:
        if not self.buffer:
            return b""
        answer, self.buffer = self.buffer[:1], self.buffer[1:]
        if answer == b"S":
            self.ready = True
            return b""
        if answer == b"N":
            raise _refused("PostgreSQL server does not accept SSL (ssl = off)")
        if answer == b"E":
            raise _refused("PostgreSQL server answered the SSL request with an error")
        raise _garbage(f"not a PostgreSQL answer: {_shown(answer + self.buffer)}")


class MySQL(Negotiation):
    """MySQL/MariaDB: the server's handshake packet, then our SSLRequest packet, then TLS
    at once (no go-ahead)."""

    name = "MySQL"
    CLIENT_SSL = 0x800
    # CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SSL | CLIENT_SECURE_CONNECTION
    CAPABILITIES = 0x1 | 0x200 | CLIENT_SSL | 0x8000

    def _consume(self) -> bytes:
        if len(self.buffer) < 4:
            return b""
        length = int.from_bytes(self.buffer[:3], "little")
        if len(self.buffer) < 4 + length:
            return b""
        payload, self.buffer = self.buffer[4 : 4 + length], self.buffer[4 + length :]
        if payload[:1] == b"\xff":
            message = payload[9:].decode("utf-8", "replace") if len(payload) > 9 else ""
            raise _refused(f"MySQL server refused the session: {message[:200]}")
        if payload[:1] != b"\x0a":
            raise _garbage(f"not a MySQL handshake: {_shown(payload)}")
        end = payload.find(b"\x00", 1)  # server version, NUL-terminated
        # connection id (4), auth data (8), filler (1), then the low capability bytes
        flags_at = end + 1 + 4 + 8 + 1
        if end < 0 or len(payload) < flags_at + 2:
            raise _garbage(f"truncated MySQL handshake: {_shown(payload)}")
        capabilities = int.from_bytes(payload[flags_at : flags_at + 2], "little")
        if not capabilities & self.CLIENT_SSL:
            raise _refused("MySQL server does not offer SSL")
        body = (
            self.CAPABILITIES.to_bytes(4, "little")
            + (16 * 1024 * 1024).to_bytes(4, "little")
            + bytes([45])  # utf8mb4_general_ci
            + bytes(23)
        )
        self.ready = True
        return len(body).to_bytes(3, "little") + b"\x01" + body


class LDAP(Negotiation):
    """LDAP's StartTLS extended operation (RFC 4511 4.14): one request, one BER answer."""

    name = "LDAP"
    OID = b"1.3.6.1.4.1.1466.20037"
    REQUEST = b"\x30\x1d\x02\x01\x01\x77\x18\x80\x16" + OID

    def start(self) -> bytes:
        return self.REQUEST

    @staticmethod
    def _element(data: bytes, at: int) -> tuple[int, int, int] | None:
        """(tag, start of contents, end) of the BER element at `at`, None if incomplete."""
        if len(data) < at + 2:
            return None
        tag, first = data[at], data[at + 1]
        if first < 0x80:
            return tag, at + 2, at + 2 + first
        count = first & 0x7F
        if count == 0 or count > 3:
            raise _garbage(f"not an LDAP message: {_shown(data)}")
        if len(data) < at + 2 + count:
            return None
        length = int.from_bytes(data[at + 2 : at + 2 + count], "big")
        return tag, at + 2 + count, at + 2 + count + length

    def _consume(self) -> bytes:
        outer = self._element(self.buffer, 0)
        if outer is None:
            return b""
        tag, start, end = outer
        if tag != 0x30:
            raise _garbage(f"not an LDAP message: {_shown(self.buffer)}")
        if len(self.buffer) < end:
            return b""
        message, self.buffer = self.buffer[:end], self.buffer[end:]
        message_id = self._element(message, start)
        if message_id is None or message_id[0] != 0x02:
            raise _garbage(f"not an LDAP message: {_shown(message)}")
        op = self._element(message, message_id[2])
        if op is None or op[0] != 0x78:
            raise _garbage(f"not an LDAP extended response: {_shown(message)}")
        code = self._element(message, op[1])
        if code is None or code[0] != 0x0A or code[2] > len(message):
            raise _garbage(f"not an LDAP extended response: {_shown(message)}")
        result = int.from_bytes(message[code[1] : code[2]], "big")
        if result != 0:
            raise _refused(f"LDAP server refused StartTLS (result code {result})")
        self.ready = True
        return b""


class XMPP(Negotiation):
    """XMPP (RFC 6120 5.4): open a stream, read the features, ask for TLS, wait for proceed.
    Substring checks, not an XML parser: only a handful of fixed elements matter here."""

    name = "XMPP"
    namespace = "jabber:client"
    TLS_NS = b"urn:ietf:params:xml:ns:xmpp-tls"

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.asked = False

    def start(self) -> bytes:
        return (
            f"<?xml version='1.0'?><stream:stream to='{self.host}' xmlns='{self.namespace}'"
            " xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        ).encode()

    def _consume(self) -> bytes:
        if self.buffer.lstrip()[:1] not in (b"", b"<"):
            raise _garbage(f"not an XMPP stream: {_shown(self.buffer)}")
        if b"<stream:error" in self.buffer:
            raise _refused(f"XMPP server refused the stream: {_shown(self.buffer)}")
        if not self.asked:
            end = self.buffer.find(b"</stream:features>")
            if end < 0:
                return b""
            features, self.buffer = self.buffer[:end], self.buffer[end + len(b"</stream:features>") :]
            if self.TLS_NS not in features:
                raise _refused("XMPP server does not offer STARTTLS")
            self.asked = True
            return b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        for answer in (b"<proceed", b"<failure"):
            at = self.buffer.find(answer)
            if at >= 0:
                close = self.buffer.find(b">", at)
                if close < 0:
                    return b""
                if answer == b"<failure":
                    raise _refused("XMPP server refused STARTTLS")
                self.buffer = self.buffer[close + 1 :]
                self.ready = True
        return b""


class XMPPServer(XMPP):
    namespace = "jabber:server"


def negotiation(dialect: str, host: str) -> Negotiation:
    """A fresh state machine for one connection (see `scan.protocols.Scheme.starttls`)."""
    if dialect == "xmpp":
        return XMPP(host)
    if dialect == "xmpp-server":
        return XMPPServer(host)
    classes: dict[str, type[Negotiation]] = {
        "smtp": SMTP,
        "imap": IMAP,
        "pop3": POP3,
        "ftp": FTP,
        "sieve": Sieve,
        "postgres": Postgres,
        "mysql": MySQL,
        "ldap": LDAP,
    }
    return classes[dialect]()
