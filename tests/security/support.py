"""Helpers for the security tests: clients bound to a chosen loopback source address, an SMTP
server that insists on AUTH, database dumps, and the mail-link flows as a user walks them.

Every client can speak from its own 127.0.0.x address (Linux routes all of 127/8 to lo), so
one live server serves many tests without their per-IP quotas and audit rows mixing, and the
audit log's ``ip`` can be checked against the address that really made each request.
"""

from __future__ import annotations

import re
import socket
import sqlite3
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import httpx
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from keychest.client import LineReply
from keychest.store.db import normalise_url
from tests.notify.smtp import SmtpSink, _Handler
from tests.support.server import LiveServer

SMTP_USER = "keychest-mailer"
SMTP_PASSWORD = "smtp-Secret-7f3a9c2e51d84b06"
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


# --- SMTP that requires AUTH ---------------------------------------------------------------------


class AuthSmtpSink(SmtpSink):
    """The test sink, but mail is accepted only after AUTH with SMTP_USER / SMTP_PASSWORD."""

    def __init__(self) -> None:
        super().__init__()
        self.logins: list[tuple[str, bool]] = []

    def _authenticate(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == SMTP_USER
            and auth_data.password.decode() == SMTP_PASSWORD
        )
        self.logins.append((mechanism, ok))
        return AuthResult(success=ok)

    def start(self) -> AuthSmtpSink:
        self._controller = Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_required=True,
            auth_require_tls=False,  # loopback only; keeps the test free of certificates
        )
        self._controller.start()
        return self


# --- clients from a chosen source address ---------------------------------------------------------


def line(server: LiveServer, source: str, command: str, **args: str) -> LineReply:
    """One request on a fresh connection from ``source`` (a 127.0.0.x address)."""
    text = " ".join(["command", command, *(f"{k} {v}" for k, v in args.items())])
    with socket.create_connection(
        ("127.0.0.1", server.line_port), timeout=10, source_address=(source, 0)
    ) as sock:
        sock.sendall(text.encode("ascii") + b"\n")
        buffer = b""
        while b"\nstatus " not in b"\n" + buffer or not buffer.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            buffer += chunk
    return LineReply.parse(buffer.decode("ascii", "replace"))


def http(server: LiveServer, source: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.http_url,
        transport=httpx.HTTPTransport(local_address=source),
        follow_redirects=False,
        timeout=15,
    )


def csrf_of(page: httpx.Response) -> str:
    found = CSRF_FIELD.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


# --- mails ------------------------------------------------------------------------------------------


def link(sink: SmtpSink, mail: EmailMessage, path: str) -> str:
    """The one link in ``mail`` whose path starts with ``path`` (e.g. "/confirm/"), as a path."""
    found = [url for url in sink.links(mail) if httpx.URL(url).path.startswith(path)]
    assert len(found) == 1, (path, sink.links(mail))
    return httpx.URL(found[0]).raw_path.decode()


def token_of(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[1]


@dataclass
class Account:
    email: str
    key: str
    session: httpx.Client  # signed in (the confirm link's cookie)


def confirmed_account(server: LiveServer, sink: SmtpSink, source: str, email: str) -> Account:
    """apikey + claim over the line API, then the confirm link: a signed-in dashboard client."""
    key = line(server, source, "apikey").data
    assert key
    claimed = line(server, source, "claim", apikey=key, email=email)
    assert claimed.ok, claimed
    mail = sink.wait_to(email, subject="Confirm")
    client = http(server, source)
    answer = client.post(link(sink, mail, "/confirm/"))
    assert answer.status_code == 303, answer.text
    assert client.cookies.get("keychest_session")
    return Account(email, key, client)


# --- the database -------------------------------------------------------------------------------------


def dump_database(db_url: str) -> str:
    """Every row of every table as text (what a stolen backup would hold)."""
    if db_url.startswith("sqlite:///"):
        path = Path(db_url.removeprefix("sqlite:///"))
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return "\n".join(db.iterdump())
    engine = sa.create_engine(normalise_url(db_url))
    try:
        lines: list[str] = []
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                    lines.append(f"{table}: {tuple(row)!r}")
        return "\n".join(lines)
    finally:
        engine.dispose()


def query(db_url: str, sql: str) -> list[tuple]:
    engine = sa.create_engine(normalise_url(db_url))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def rows(server: LiveServer, query: str, *params: object) -> list[tuple]:
    with sqlite3.connect(f"file:{server.data_dir / 'keychest.db'}?mode=ro", uri=True) as db:
        return db.execute(query, params).fetchall()
