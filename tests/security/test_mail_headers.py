"""Issue 10 item 7: owner-triggered mails are rate-limited, and List-Unsubscribe stays usable.

`List-Unsubscribe` must arrive as ``List-Unsubscribe: <https://...>`` on one line, as the raw
bytes aiosmtpd received show it: an RFC 2047 encoded-word (what the standard library makes of
a long header without spaces) is not a URL to RFC 8058 one-click unsubscribe.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.notify.smtp import SmtpSink
from tests.security.conftest import Env
from tests.security.support import Account, confirmed_account, csrf_of, line, rows
from tests.support.net import wait_for_port
from tests.support.server import LiveServer, start_server

pytestmark = pytest.mark.timeout(180)

# Long enough that the header line passes 78 characters: what made the library fold it.
PUBLIC_URL = "https://keychest-monitoring.operations.example.net"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, SmtpSink]]:
    with SmtpSink() as sink:
        server = start_server(
            Path(tmp_path_factory.mktemp("mail-headers")), "--smtp", sink.address, "--public-url", PUBLIC_URL
        )
        wait_for_port(server.http_port)
        try:
            yield server, sink
        finally:
            server.stop()


def settings_form(csrf: str, notify_email: str) -> dict[str, str]:
    return {
        "csrf": csrf,
        "action": "save",
        "notify_email": notify_email,
        "expiry_thresholds": "28, 14, 7, 3, 1",
        "alerts_enabled": "on",
        "weekly_enabled": "on",
        "weekly_day": "0",
        "weekly_time": "08:00",
        "timezone": "UTC",
    }


def save(account: Account, notify_email: str) -> int:
    """303 when saved, 429 when refused for the rate limit (the dashboard redirects a refused
    form back to its page, which shows why)."""
    token = csrf_of(account.session.get("/settings"))
    answer = account.session.post("/settings", data=settings_form(token, notify_email))
    assert answer.status_code == 303, answer.text
    if "done=saved" in answer.headers["location"]:
        return 303
    page = account.session.get(answer.headers["location"]).text
    assert 'role="alert"' in page, page
    return 429 if "too many" in page else 400


def test_notification_address_confirmations_are_rate_limited(env: Env) -> None:
    # The package's server: its http:// public URL keeps the (then not Secure) cookie usable.
    server, sink = env.server, env.sink
    owner = confirmed_account(server, sink, "127.0.0.221", "owner@headers.example.org")
    victim = "victim@headers.example.org"
    codes = []
    # Back and forth between the victim and the own address: every switch to the victim
    # would mail it a confirmation (8 mails in a second before).
    for _ in range(4):
        codes.append(save(owner, victim))
        assert save(owner, "") == 303
    assert codes == [303, 303, 303, 429]
    # Three queued (those overtaken by the switch back are then skipped); the refused change
    # queued nothing.
    assert rows(server, "SELECT count(*) FROM outbox WHERE to_addr = ?", victim) == [(3,)]
    # Per account too: other recipients, the same account.
    more = [save(owner, f"other{n}@headers.example.org") for n in range(3)]
    assert more == [303, 303, 429]
    owner.session.close()


def test_list_unsubscribe_is_one_plain_line(live: tuple[LiveServer, SmtpSink]) -> None:
    server, sink = live
    email = "weekly@headers.example.org"
    account = confirmed_account(server, sink, "127.0.0.222", email)
    account.session.close()
    # A name the loopback resolver does not know: an error, which the weekly report lists.
    assert line(server, "127.0.0.222", "add", apikey=account.key, domain="gone.headers.test").ok
    deadline = time.monotonic() + 60
    while not rows(server, "SELECT count(*) FROM address_states WHERE error_kind IS NOT NULL")[0][0]:
        assert time.monotonic() < deadline, "the scanner did not record the failure"
        time.sleep(0.2)
    sent = server.cli(
        "report", "weekly", "--email", email, "--now",
        "--smtp", sink.address, "--public-url", PUBLIC_URL, "--mail-domain", "keychest.test",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    sink.wait_to(email, subject="Weekly")
    raw = next(r for r in sink.raw if b"Weekly certificate report" in r and email.encode() in r)
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    found = re.search(r"^List-Unsubscribe: <(https://[^>\s]+)>\r?$", head, re.MULTILINE)
    assert found, head
    assert found.group(1).startswith(f"{PUBLIC_URL}/unsubscribe/")
    assert "=?" not in head.split("List-Unsubscribe:", 1)[1].split("\n", 1)[0]
    assert re.search(r"^List-Unsubscribe-Post: List-Unsubscribe=One-Click\r?$", head, re.MULTILINE), head
