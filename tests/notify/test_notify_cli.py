"""`keychest notify test URL`, the serve flags' checks and `keychest outbox`, through the real
command (a subprocess) against real local receivers: the native webhook (signature checked by
the independent `standardwebhooks` package) and Apprise's json:// and form://."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs

import jsonschema
from standardwebhooks.webhooks import Webhook

from keychest.notify import deliver, signing
from tests.notify.receiver import receiver
from tests.notify.smtp import SmtpSink

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "notify-payload.schema.json").read_text())


def keychest(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from keychest.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def secret_file(tmp_path: Path) -> tuple[str, Path]:
    secret = signing.new_secret()
    path = tmp_path / "secret"
    path.write_text(secret + "\n")
    return secret, path


def test_webhook_test_is_signed_and_valid(tmp_path: Path) -> None:
    secret, path = secret_file(tmp_path)
    with receiver() as hook:
        done = keychest(
            "notify", "test", hook.url + "/in", "--webhook-secret-file", str(path), "--allow-private-targets"
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("sent: HTTP 200")
        [request] = hook.wait_for(1)
    payload = Webhook(secret).verify(request.body, request.headers)
    jsonschema.validate(payload, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert payload["type"] == "notification.test" and request.path == "/in"
    # The same request with one byte changed fails the independent check.
    tampered = request.body.replace(b"test", b"tost", 1)
    try:
        Webhook(secret).verify(tampered, request.headers)
    except Exception as exc:
        assert "signature" in str(exc).lower()
    else:
        raise AssertionError("a tampered body verified")


def test_refusing_receiver_exits_1_with_its_answer(tmp_path: Path) -> None:
    with receiver(status=401) as hook:
        hook.answer = b"bad token"
        done = keychest("notify", "test", hook.url, "--allow-private-targets")
    assert done.returncode == 1
    assert "HTTP 401" in done.stderr and "bad token" in done.stderr


def test_private_address_is_refused_without_the_allowance() -> None:
    with receiver() as hook:
        done = keychest("notify", "test", hook.url)
        assert hook.requests == []
    assert done.returncode == 1
    assert "loopback address" in done.stderr and "--allow-private-targets" in done.stderr


def test_apprise_json_and_form_receivers() -> None:
    with receiver() as hook:
        host = hook.url.removeprefix("http://")
        done = keychest("notify", "test", f"json://{host}/j", "--allow-private-targets")
        assert done.returncode == 0, done.stderr
        done = keychest("notify", "test", f"form://{host}/f", "--allow-private-targets")
        assert done.returncode == 0, done.stderr
        as_json, as_form = hook.wait_for(2)
    assert as_json.path == "/j" and json.loads(as_json.body)["title"] == "keychest test notification"
    assert as_form.path == "/f"
    assert parse_qs(as_form.body.decode())["title"] == ["keychest test notification"]


def test_apprise_receiver_error_exits_1() -> None:
    with receiver(status=500) as hook:
        done = keychest(
            "notify", "test", "json://" + hook.url.removeprefix("http://"), "--allow-private-targets"
        )
    assert done.returncode == 1 and done.stderr.startswith("error: ")


def test_invalid_urls_named() -> None:
    done = keychest("notify", "test", "nosuchservice://x")
    assert (
        done.returncode == 1
        and "not a valid Apprise URL" in done.stderr
        and "nosuchservice://" in done.stderr
    )


def test_serve_refuses_bad_channel_flags(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    done = keychest("serve", "--data-dir", data, "--webhook", "https://hooks.example.org/x")
    assert done.returncode == 2 and "--webhook-secret-file" in done.stderr
    done = keychest("serve", "--data-dir", data, "--notify", "nosuchservice://x")
    assert done.returncode == 2 and "not a valid Apprise URL" in done.stderr
    secret, path = secret_file(tmp_path)
    done = keychest(
        "serve", "--data-dir", data, "--webhook", "http://127.0.0.1:9/x", "--webhook-secret-file", str(path)
    )
    assert done.returncode == 2 and "loopback address" in done.stderr
    path.write_text("not-a-secret")
    done = keychest(
        "serve", "--data-dir", data, "--webhook", "https://h.example/x", "--webhook-secret-file", str(path)
    )
    assert done.returncode == 2 and "whsec_" in done.stderr


def _snippet(language: str) -> str:
    text = (Path(__file__).parents[2] / "docs" / "notify.md").read_text()
    start = text.index(f"```{language}\n", text.index("## Verifying the signature")) + len(language) + 4
    return text[start : text.index("```", start)]


def test_docs_verification_snippets_accept_a_real_delivery_and_refuse_a_forged_one(tmp_path: Path) -> None:
    secret, path = secret_file(tmp_path)
    with receiver() as hook:
        done = keychest(
            "notify", "test", hook.url, "--webhook-secret-file", str(path), "--allow-private-targets"
        )
        assert done.returncode == 0, done.stderr
        [request] = hook.wait_for(1)
    namespace: dict[str, object] = {}
    exec(_snippet("python"), namespace)
    verify = namespace["verify"]
    assert verify(secret, request.headers, request.body) is True  # type: ignore[operator]
    assert verify(secret, request.headers, request.body + b" ") is False  # type: ignore[operator]
    (tmp_path / "body.json").write_bytes(request.body)
    env = {
        "PATH": "/usr/bin:/bin",
        "SECRET": secret,
        "WEBHOOK_ID": request.headers["webhook-id"],
        "WEBHOOK_TIMESTAMP": request.headers["webhook-timestamp"],
        "WEBHOOK_SIGNATURE": request.headers["webhook-signature"],
    }
    ok = subprocess.run(
        ["bash", "-c", _snippet("bash")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "valid", ok.stderr
    (tmp_path / "body.json").write_bytes(request.body.replace(b"test", b"tost", 1))
    bad = subprocess.run(
        ["bash", "-c", _snippet("bash")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1 and bad.stdout.strip() == "INVALID"


def test_apprise_mailto_end_to_end_through_a_real_smtp_server(smtp_sink: SmtpSink) -> None:
    url = f"mailto://{smtp_sink.address}?from=keychest@example.org&to=ops@example.org&mode=insecure"
    done = keychest("notify", "test", url, "--allow-private-targets")
    assert done.returncode == 0, done.stderr
    message = smtp_sink.wait_to("ops@example.org")
    assert "keychest test notification" in str(message["Subject"])


def test_guard_covers_apprise_hosts_and_smtp_servers() -> None:
    """An Apprise URL naming an internal server (its host, or its smtp=) is refused; a service
    token in the host part (slack://T.../...) is not mistaken for a host name."""
    done = keychest("notify", "test", "mailto://user:pw@example.org?smtp=10.0.0.1&to=a@example.org")
    assert done.returncode == 1 and "10.0.0.1" in done.stderr and "private address" in done.stderr
    done = keychest("notify", "test", "gotify://169.254.169.254/token")
    assert done.returncode == 1 and "link-local" in done.stderr
    targets = deliver.guarded_hosts(deliver.Target(deliver.APPRISE, "slack://T1234/B5678/abcdefgh"))
    assert targets == []
    ntfy = deliver.guarded_hosts(deliver.Target(deliver.APPRISE, "ntfy://ntfy.example.org/topic"))
    assert ntfy == ["ntfy.example.org"]
