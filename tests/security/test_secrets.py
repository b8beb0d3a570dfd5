"""Items 1 and 6 of the security review: secrets are stored only hashed and never logged.

A full flow runs against a live `keychest serve --log-level debug` that mails through an SMTP
server requiring AUTH: keys from the line API, REST (generated and client-chosen) and the
certbot hook; every link token of every mail (confirm, block, sign-in, approve, revoke,
confirm-address, unsubscribe); the session cookie. Then every row of every table (SQLite,
and PostgreSQL when KEYCHEST_TEST_DATABASE_URL is set), the server's log and the hook's log
are searched for each raw secret and for the SMTP password. Key prefixes (8 characters) may
appear; nothing longer.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import re
from pathlib import Path

import pytest

from tests.hook.support import CertbotTree, clean_env, fixture_log, run_hook, server_env
from tests.security.support import (
    SMTP_PASSWORD,
    SMTP_USER,
    AuthSmtpSink,
    csrf_of,
    dump_database,
    http,
    line,
    link,
    query,
    token_of,
)
from tests.support.net import wait_for_port

pytestmark = pytest.mark.timeout(180)

SRC = "127.0.0.31"
SOURCE_DIR = Path(__file__).resolve().parents[2] / "src" / "keychest"


@pytest.mark.slow  # a whole mail round trip on every database
def test_no_raw_secret_in_the_database_or_the_logs(server_factory, db_url: str, tmp_path: Path) -> None:
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    password_file.chmod(0o600)
    secrets: dict[str, str] = {}  # what -> raw value

    with AuthSmtpSink() as sink:
        server = server_factory(
            "--log-level", "debug",
            "--smtp", sink.address,
            "--smtp-user", SMTP_USER,
            "--smtp-password-file", str(password_file),
            db_url=db_url,
        )  # fmt: skip
        wait_for_port(server.http_port)

        # Line API: a key, claimed, a domain.
        key = line(server, SRC, "apikey").data
        assert key
        secrets["line key"] = key
        assert line(server, SRC, "claim", apikey=key, email="owner@example.org").ok
        assert line(server, SRC, "add", apikey=key, domain="www.owner.test").ok

        # The confirmation mail: confirm (sets the session cookie), keep the block link's token.
        mail = sink.wait_to("owner@example.org", subject="Confirm")
        for url in sink.links(mail):
            if "/confirm/" in url or "/block/" in url or "/unsubscribe/" in url:
                secrets[f"token {url}"] = token_of(url)
        browser = http(server, SRC)
        confirm = link(sink, mail, "/confirm/")
        assert browser.get(confirm).status_code == 200
        answer = browser.post(confirm)
        assert answer.status_code == 303
        secrets["session cookie"] = browser.cookies["keychest_session"]

        # A sign-in link.
        assert http(server, SRC).post("/signin", data={"email": "owner@example.org"}).status_code == 200
        signin_mail = sink.wait_to("owner@example.org", subject="sign-in")
        signin = link(sink, signin_mail, "/signin/")
        secrets["signin token"] = token_of(signin)
        assert http(server, SRC).post(signin).status_code == 303

        # REST: a client-chosen key claimed for the same address (pending: approve by mail).
        chosen = "Chosen-Secret-Key-7f3a9c2e5b81d4f6a0e9"
        secrets["chosen key"] = chosen
        with http(server, SRC) as rest:
            answer = rest.post(
                "/api/v1.0/access/claim", json={"email": "owner@example.org", "api_key": chosen}
            )
            assert answer.status_code == 200, answer.text
            # A generated key over REST, used through every way of passing it.
            made = rest.get("/api/v1.0/access/claim/other@example.org").json()["api_key"]
            secrets["rest key"] = made
            assert rest.post(
                "/api/v1.0/servers/add", json={"domain": "www.other.test", "api_key": made}
            ).is_success
            assert rest.get("/api/v1.0/servers", headers={"Authorization": f"Bearer {made}"}).is_success
            basic = base64.b64encode(f"me:{made}".encode()).decode()
            assert rest.get("/api/v1.0/user", headers={"Authorization": f"Basic {basic}"}).is_success
            assert rest.get(
                "/api/v1.0/servers/expiration/www.other.test", params={"api_key": made}
            ).is_success
            assert rest.get("/api/v1.0/user", params={"api_key": "x" * 20}).status_code == 401
        approve_mail = sink.wait_to("owner@example.org", subject="Approve")
        for path in ("/keys/approve/", "/keys/revoke/"):
            secrets[f"token {path}"] = token_of(link(sink, approve_mail, path))
        assert http(server, SRC).post(link(sink, approve_mail, "/keys/approve/")).status_code == 200
        assert line(server, SRC, "add", apikey=chosen, domain="shop.owner.test").ok

        # Dashboard: a notification address to confirm (one more token), a server added.
        page = browser.get("/settings")
        answer = browser.post(
            "/settings",
            data={
                "csrf": csrf_of(page),
                "notify_email": "ops@example.org",
                "expiry_thresholds": "28, 7",
                "alerts_enabled": "on",
                "weekly_day": "0",
                "weekly_time": "08:00",
                "timezone": "UTC",
            },
        )
        assert answer.status_code == 303, answer.text
        address_mail = sink.wait_to("ops@example.org")
        address = link(sink, address_mail, "/confirm-address/")
        secrets["confirm-address token"] = token_of(address)
        assert http(server, SRC).post(address).status_code == 200

        # The certbot hook against the same server: its key lands in its state file.
        tree = CertbotTree.create(tmp_path / "certbot")
        tree.add_lineage("d.example", ["d.example", "e.example"])
        tree.write_log(fixture_log("5.8.0"))
        hook_log = tmp_path / "hook.log"
        run = run_hook(
            tree.install_hook("deploy"),
            clean_env(
                **server_env(server.line_port),
                RENEWED_DOMAINS="d.example e.example",
                RENEWED_LINEAGE=str(tree.config / "live" / "d.example"),
                KEYCHEST_EMAIL="hook@example.org",
                KEYCHEST_LOG=str(hook_log),
            ),
        )
        assert run.returncode == 0, run.stderr
        secrets["hook key"] = tree.state_values()["apikey"]
        assert tree.state_file.stat().st_mode & 0o777 == 0o600
        sink.wait_to("hook@example.org", subject="Confirm")
        assert sink.logins and all(ok for _, ok in sink.logins), sink.logins

    dump = dump_database(server.db_url)
    # The cookie-signing secret is stored (it must be), but must not reach a log either.
    (cookie_secret,) = query(server.db_url, "SELECT value FROM server_secrets WHERE name = 'session'")[0]
    server.stop()  # flush everything it would log
    server_log = server.log()
    logs = {"server log": server_log, "hook log": hook_log.read_text() + run.stderr + run.stdout}
    assert "DEBUG" in server_log  # the debug level really was on

    # Positive controls: the dump holds the keys' hashes and prefixes (so the search is real).
    for name in ("line key", "chosen key", "rest key", "hook key"):
        assert hashlib.sha256(secrets[name].encode()).hexdigest() in dump, name
        assert secrets[name][:8] in dump, name
    assert hashlib.sha256(secrets["signin token"].encode()).hexdigest() in dump
    assert secrets["hook key"][:8] in logs["hook log"]

    leaks = [
        f"{what} in {where}"
        for what, value in {**secrets, "SMTP password": SMTP_PASSWORD}.items()
        for where, text in {"database": dump, **logs}.items()
        if value in text
    ] + [f"cookie secret in {where}" for where, text in logs.items() if cookie_secret in text]
    assert not leaks, leaks


# --- by reading the code ---------------------------------------------------------------------------

SECRET_WORD = re.compile(
    r"(?:^|_)(?:hash|digest|token|secret|password|passwd|csrf|apikey|api_key|raw)(?:$|_)"
)
NOT_SECRET = {"hash_name", "token_pattern_len", "key_hash_prefix"}


def _secret_operand(node: ast.expr) -> str | None:
    """The name of an operand that holds a secret value (not an SQL column, not a constant)."""
    if isinstance(node, ast.Name):
        name = node.id
    elif isinstance(node, ast.Attribute):
        name = node.attr
    elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
        name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr  # hash_key(x) == ...
    else:
        return None
    lowered = name.lower()
    return name if SECRET_WORD.search(lowered) and lowered not in NOT_SECRET else None


def _sql_column(node: ast.expr) -> bool:
    """Model.column: an SQL expression (the row is found by an index, compared again after)."""
    return (
        isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id[:1].isupper()
    )


def _plain_comparison(node: ast.Compare) -> str | None:
    operands = [node.left, *node.comparators]
    for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
        if not isinstance(op, (ast.Eq, ast.NotEq)):
            continue
        if isinstance(left, ast.Constant) or isinstance(right, ast.Constant):
            continue  # against a literal ("", None): nothing secret to time
        if _sql_column(left) or _sql_column(right):
            continue
        name = _secret_operand(left) or _secret_operand(right)
        if name:
            return ast.unparse(node)
    return None


def test_secrets_are_compared_in_constant_time() -> None:
    """No `==`/`!=` on a hash, digest, token, secret, password or raw key in Python code:
    those go through hmac.compare_digest. (SQL equality on a hash column finds the row by its
    index; the row's hash is then compared again with compare_digest.)"""
    offenders = []
    for path in sorted(SOURCE_DIR.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        if path.relative_to(SOURCE_DIR).parts[0] == "scan":
            continue  # the scanner hashes only public data (certificates, OCSP key hashes)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare) and (found := _plain_comparison(node)):
                offenders.append(f"{path.relative_to(SOURCE_DIR)}:{node.lineno}: {found}")
    assert not offenders, "\n".join(offenders)
    uses = {
        str(p.relative_to(SOURCE_DIR)) for p in SOURCE_DIR.rglob("*.py") if "compare_digest" in p.read_text()
    }
    assert {"service/keys.py", "service/tokens.py", "web/session.py"} <= uses, uses


def test_the_comparison_check_catches_a_plain_comparison() -> None:
    """The check above is only worth something if it flags the mistake it looks for."""
    bad = ast.parse("if row.key_hash == digest:\n    pass\nok = Token.token_hash == digest\n")
    flagged = [found for n in ast.walk(bad) if isinstance(n, ast.Compare) and (found := _plain_comparison(n))]
    assert flagged == ["row.key_hash == digest"]
