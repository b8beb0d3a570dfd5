"""STARTTLS: the sans-IO negotiations on their own, then the probe against real Debian
servers (Exim, Dovecot, a private PostgreSQL cluster) and hostile plain-text servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes

from keychest.scan.errors import ErrorKind, ScanFailure
from keychest.scan.model import AddressResult, ScanOptions
from keychest.scan.runner import Scanner
from keychest.scan.starttls import FTP, IMAP, LDAP, POP3, SMTP, XMPP, MySQL, Negotiation, Postgres, Sieve
from keychest.scan.targets import parse_endpoint
from tests.support import tls_daemons

from .certs import CertFactory, ServerCert
from .tls_servers import TestServers


def _talk(machine: Negotiation, *answers: bytes) -> list[bytes]:
    said = [machine.start()]
    for answer in answers:
        said.append(machine.receive(answer))
    return said


# --- the state machines -------------------------------------------------------------------


def test_smtp_multiline_greeting_ehlo_starttls() -> None:
    machine = SMTP()
    said = _talk(
        machine,
        b"220-mail.test ESMTP\r\n220 welcome\r\n",
        b"250-mail.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n",
        b"250 HELP\r\n",
        b"220 go ahead\r\n",
    )
    assert said == [b"", b"EHLO keychest.invalid\r\n", b"", b"STARTTLS\r\n", b""]
    assert machine.ready


def test_smtp_answers_split_anywhere() -> None:
    machine = SMTP()
    script = b"220 hi\r\n"
    out = b"".join(machine.receive(script[i : i + 1]) for i in range(len(script)))
    assert out == b"EHLO keychest.invalid\r\n"


@pytest.mark.parametrize(
    ("answers", "kind"),
    [
        ((b"554 no service for you\r\n",), ErrorKind.STARTTLS_REFUSED),
        ((b"220 hi\r\n", b"250-x\r\n250 SIZE 1\r\n"), ErrorKind.STARTTLS_REFUSED),  # not offered
        (
            (b"220 hi\r\n", b"250-x\r\n250 STARTTLS\r\n", b"454 TLS not available\r\n"),
            ErrorKind.STARTTLS_REFUSED,
        ),
        ((b"HTTP/1.1 400 Bad Request\r\n",), ErrorKind.GARBAGE),
        ((b"220 hi\r\n", b"250-x\r\n250 STARTTLS\r\n", b"220 go\r\n\x16\x03\x01"), ErrorKind.GARBAGE),
        ((b"220-" + b"x" * 5000,), ErrorKind.GARBAGE),
        ((b"220-banner\r\n" * 6000,), ErrorKind.GARBAGE),  # a 72 kB banner: capped, not read on
    ],
)
def test_smtp_refusals_and_garbage(answers: tuple[bytes, ...], kind: ErrorKind) -> None:
    with pytest.raises(ScanFailure) as caught:
        _talk(SMTP(), *answers)
    assert caught.value.error.kind == kind


def test_imap_pop3_sieve_ftp() -> None:
    imap = IMAP()
    assert (
        _talk(imap, b"* OK ready\r\n", b"* CAPABILITY IMAP4rev1\r\nK1 OK Begin TLS\r\n")[1]
        == b"K1 STARTTLS\r\n"
    )
    assert imap.ready
    with pytest.raises(ScanFailure, match="refused STARTTLS"):
        _talk(IMAP(), b"* OK ready\r\n", b"K1 BAD no\r\n")
    with pytest.raises(ScanFailure, match="refused the session"):
        _talk(IMAP(), b"* BYE busy\r\n")
    pop3 = POP3()
    assert _talk(pop3, b"+OK hi\r\n", b"+OK begin\r\n")[1] == b"STLS\r\n" and pop3.ready
    with pytest.raises(ScanFailure, match="refused STLS"):
        _talk(POP3(), b"+OK hi\r\n", b"-ERR no\r\n")
    sieve = Sieve()
    assert _talk(sieve, b'"IMPLEMENTATION" "x"\r\n"STARTTLS"\r\nOK "hi"\r\n', b"OK\r\n")[1] == b"STARTTLS\r\n"
    assert sieve.ready
    with pytest.raises(ScanFailure, match="does not offer"):
        _talk(Sieve(), b'"IMPLEMENTATION" "x"\r\nOK "hi"\r\n')
    ftp = FTP()
    assert _talk(ftp, b"220-hi\r\nfree text\r\n220 ready\r\n", b"234 AUTH TLS ok\r\n")[1] == b"AUTH TLS\r\n"
    assert ftp.ready


def test_postgres_mysql_ldap_xmpp() -> None:
    pg = Postgres()
    assert _talk(pg, b"S") == [b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b""] and pg.ready
    with pytest.raises(ScanFailure) as caught:
        _talk(Postgres(), b"N")
    assert caught.value.error.kind == ErrorKind.STARTTLS_REFUSED

    def handshake(capabilities: int) -> bytes:
        greeting = b"\x0a" + b"10.11.6-MariaDB\x00" + bytes(4) + bytes(8) + b"\x00"
        greeting += capabilities.to_bytes(2, "little") + bytes(20)
        return len(greeting).to_bytes(3, "little") + b"\x00" + greeting

    mysql = MySQL()
    answer = mysql.receive(handshake(0xFFFF))
    assert mysql.ready and answer[:4] == b"\x20\x00\x00\x01" and len(answer) == 36
    with pytest.raises(ScanFailure, match="does not offer SSL"):
        MySQL().receive(handshake(0xF7FF))  # MariaDB without ssl: CLIENT_SSL (0x800) is clear
    ldap = LDAP()
    ldap.receive(b"\x30\x0c\x02\x01\x01\x78\x07\x0a\x01\x00\x04\x00\x04\x00")
    assert ldap.ready
    with pytest.raises(ScanFailure, match="result code 2"):
        LDAP().receive(b"\x30\x0c\x02\x01\x01\x78\x07\x0a\x01\x02\x04\x00\x04\x00")
    xmpp = XMPP("chat.test")
    assert b"to='chat.test'" in xmpp.start()
    features = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"
    assert xmpp.receive(b"<?xml version='1.0'?><stream:stream from='chat.test'>" + features).startswith(
        b"<starttls"
    )
    xmpp.receive(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    assert xmpp.ready


# --- real servers ---------------------------------------------------------------------------


def _scan(target: str, certs: CertFactory, timeout: float = 10.0) -> AddressResult:
    options = ScanOptions(timeout=timeout, ca_file=str(certs.ca_file), allow_private_targets=True)
    [result] = asyncio.run(Scanner(options).scan([parse_endpoint(target)]))
    return result


@pytest.fixture(scope="module")
def mail_cert(certs: CertFactory) -> ServerCert:
    return certs.valid("127.0.0.1")


@pytest.fixture(scope="module")
def dovecot_ports(mail_cert: ServerCert) -> Iterator[tuple[int, int, int]]:
    if tls_daemons.missing("dovecot"):
        pytest.skip("dovecot-imapd/dovecot-pop3d not installed (scripts/test.sh installs them)")
    with tls_daemons.dovecot(mail_cert.chain_pem, mail_cert.key_pem) as ports:
        yield ports


def _assert_ok(result: AddressResult, protocol: str, cert: ServerCert) -> None:
    assert result.error is None, result.error
    assert result.endpoint.protocol == protocol
    assert result.verdict is not None and result.verdict.trusted and result.verdict.hostname_ok
    assert result.leaf is not None
    assert result.leaf.sha256 == cert.leaf.fingerprint(hashes.SHA256()).hex()


def test_imap_and_pop3_on_dovecot(
    dovecot_ports: tuple[int, int, int], mail_cert: ServerCert, certs: CertFactory
) -> None:
    imap, pop3, sieve = dovecot_ports
    _assert_ok(_scan(f"imap://127.0.0.1:{imap}", certs), "imap", mail_cert)
    _assert_ok(_scan(f"pop3://127.0.0.1:{pop3}", certs), "pop3", mail_cert)
    if sieve:  # dovecot-managesieved
        _assert_ok(_scan(f"sieve://127.0.0.1:{sieve}", certs), "sieve", mail_cert)
    # Implicit TLS against a plain-text port: the greeting is not TLS.
    assert _scan(f"imaps://127.0.0.1:{imap}", certs).error.kind == ErrorKind.GARBAGE  # type: ignore[union-attr]


def test_smtp_on_exim(mail_cert: ServerCert, certs: CertFactory) -> None:
    if tls_daemons.missing("exim"):
        pytest.skip("exim4-daemon-light not installed (scripts/test.sh installs it)")
    with tls_daemons.exim(mail_cert.chain_pem, mail_cert.key_pem) as port:
        _assert_ok(_scan(f"smtp://127.0.0.1:{port}", certs), "smtp", mail_cert)
        _assert_ok(_scan(f"submission://127.0.0.1:{port}", certs), "submission", mail_cert)


@pytest.mark.slow
def test_postgres_ssl_on_and_off(mail_cert: ServerCert, certs: CertFactory) -> None:
    if tls_daemons.missing("postgres"):
        pytest.skip("PostgreSQL 15 server binaries not installed")
    with tls_daemons.postgres_ssl(mail_cert.chain_pem, mail_cert.key_pem) as port:
        _assert_ok(_scan(f"postgres://127.0.0.1:{port}", certs), "postgres", mail_cert)
    with tls_daemons.postgres_ssl(mail_cert.chain_pem, mail_cert.key_pem, ssl=False) as port:
        result = _scan(f"postgres://127.0.0.1:{port}", certs)
        assert result.error is not None and result.error.kind == ErrorKind.STARTTLS_REFUSED


@pytest.mark.slow
def test_mysql_on_mariadb(mail_cert: ServerCert, certs: CertFactory) -> None:
    if tls_daemons.missing("mariadb"):
        pytest.skip("mariadb-server not installed (scripts/test.sh installs it)")
    with tls_daemons.mariadb(mail_cert.chain_pem, mail_cert.key_pem) as port:
        _assert_ok(_scan(f"mysql://127.0.0.1:{port}", certs), "mysql", mail_cert)


def test_ldap_on_slapd(mail_cert: ServerCert, certs: CertFactory) -> None:
    if tls_daemons.missing("slapd"):
        pytest.skip("slapd not installed (scripts/test.sh installs it)")
    with tls_daemons.slapd(mail_cert.chain_pem, mail_cert.key_pem) as port:
        _assert_ok(_scan(f"ldap://127.0.0.1:{port}", certs), "ldap", mail_cert)


def test_ftp_on_vsftpd(mail_cert: ServerCert, certs: CertFactory) -> None:
    if tls_daemons.missing("vsftpd"):
        pytest.skip("vsftpd not installed (scripts/test.sh installs it)")
    with tls_daemons.vsftpd(mail_cert.chain_pem, mail_cert.key_pem) as port:
        _assert_ok(_scan(f"ftp://127.0.0.1:{port}", certs), "ftp", mail_cert)
    with tls_daemons.vsftpd(mail_cert.chain_pem, mail_cert.key_pem, anonymous=False) as port:
        refused = _scan(f"ftp://127.0.0.1:{port}", certs)
        assert refused.error is not None and refused.error.kind == ErrorKind.STARTTLS_REFUSED
        assert "500 OOPS" in refused.error.message


def test_xmpp_on_prosody(mail_cert: ServerCert, certs: CertFactory) -> None:
    if tls_daemons.missing("prosody"):
        pytest.skip("prosody not installed (scripts/test.sh installs it)")
    with tls_daemons.prosody(mail_cert.chain_pem, mail_cert.key_pem, "127.0.0.1") as port:
        _assert_ok(_scan(f"xmpp://127.0.0.1:{port}", certs), "xmpp", mail_cert)


# --- hostile plain-text servers -------------------------------------------------------------


async def _never_go_ahead(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 hi\r\n")
    await writer.drain()
    while await reader.read(4096):
        pass  # reads EHLO and says nothing more


async def _megabyte_banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for _ in range(256):
        writer.write(b"220-" + b"x" * 4000 + b"\r\n")
        await writer.drain()
    writer.close()


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"554 go away\r\n")
    await writer.drain()
    await reader.read(4096)
    writer.close()


@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        (_never_go_ahead, ErrorKind.TIMEOUT),
        (_megabyte_banner, ErrorKind.GARBAGE),
        (_refuse, ErrorKind.STARTTLS_REFUSED),
    ],
)
def test_hostile_smtp_costs_at_most_the_time_out(
    servers: TestServers, certs: CertFactory, handler: object, kind: ErrorKind
) -> None:
    port = servers._listen(handler, ["127.0.0.1"], None)
    started = time.monotonic()
    result = _scan(f"smtp://127.0.0.1:{port}", certs, timeout=1.5)
    assert result.error is not None and result.error.kind == kind, result.error
    assert time.monotonic() - started < 3
    if kind == ErrorKind.TIMEOUT:
        assert "SMTP STARTTLS negotiation" in result.error.message


def test_cli_unknown_scheme_is_a_usage_error_listing_the_known_ones() -> None:
    from .test_cli import keychest

    done = keychest("gopher://mail.test")
    assert done.returncode == 2
    assert "unknown scheme 'gopher'" in done.stderr and "smtp, submission, imap" in done.stderr


def test_cli_json_has_protocol(
    mail_cert: ServerCert, certs: CertFactory, dovecot_ports: tuple[int, int, int]
) -> None:
    import json

    from .test_cli import keychest

    done = keychest(
        "--json",
        "--allow-private-targets",
        "--ca-file",
        str(certs.ca_file),
        f"pop3://127.0.0.1:{dovecot_ports[1]}",
    )
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["protocol"] == "pop3" and row["port"] == dovecot_ports[1] and row["state"] == "ok"
