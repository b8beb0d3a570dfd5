"""`keychest notify test URL`, and the alert-channel flags of `keychest serve`.

A URL with http:// or https:// is a native signed webhook (Standard Webhooks); anything else
is an Apprise URL (slack://, msteams://, tgram://, ntfy://, json://, mailto://, ...).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from keychest.cli.options import env_option, parse_duration
from keychest.config import NotifySettings
from keychest.notify import deliver, signing


def read_secret(path: str | None, flag: str = "--webhook-secret-file") -> str | None:
    if path is None:
        return None
    secret = Path(path).read_text().strip()
    try:
        signing.secret_bytes(secret)
    except signing.SecretError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint=flag) from None
    return secret


def notify_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = env_option(
        "--renotify",
        default="24h",
        show_default=True,
        help="Send an unacknowledged critical incident again this often (0: never), e.g. 12h.",
    )(func)
    func = env_option(
        "--webhook-secret-file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="File holding the whsec_... secret that signs every --webhook delivery.",
    )(func)
    func = env_option(
        "--webhook",
        "webhook_urls",
        multiple=True,
        help="Server-wide signed webhook (Standard Webhooks) receiving every alert; repeatable.",
    )(func)
    return env_option(
        "--notify",
        "notify_urls",
        multiple=True,
        help="Server-wide Apprise URL (slack://, ntfy://, json://, ...) receiving every alert; repeatable.",
    )(func)


def notify_settings(
    notify_urls: tuple[str, ...],
    webhook_urls: tuple[str, ...],
    webhook_secret_file: str | None,
    *,
    allow_private_targets: bool,
    renotify: str = "24h",
) -> NotifySettings:
    """NotifySettings from the flags of :func:`notify_options`; a bad URL stops the start."""
    secret = read_secret(webhook_secret_file)
    if webhook_urls and secret is None:
        raise click.UsageError("--webhook needs --webhook-secret-file (the receiver checks the signature)")
    targets = [deliver.Target(deliver.APPRISE, u) for u in notify_urls] + [
        deliver.Target(deliver.WEBHOOK, u, secret) for u in webhook_urls
    ]
    for target in targets:
        flag = "--notify" if target.kind == deliver.APPRISE else "--webhook"
        try:
            deliver.check_url(target)
            deliver.check_private(target, allow_private_targets)
        except deliver.ChannelUrlError as exc:
            raise click.BadParameter(
                f"{deliver.kind_of(target.url)} {target.url!r}: {exc}", param_hint=flag
            ) from None
    renotify_s = 0.0 if renotify.strip() in ("0", "0s") else parse_duration(renotify)
    return NotifySettings(
        apprise_urls=tuple(notify_urls),
        webhook_urls=tuple(webhook_urls),
        webhook_secret=secret,
        renotify_s=renotify_s,
    )


@click.group("notify")
def notify_cmd() -> None:
    """Alert channels: Apprise URLs and signed webhooks (docs/notify.md)."""


@notify_cmd.command("test")
@click.argument("url")
@click.option(
    "--webhook-secret-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Sign the test with this whsec_... secret (http(s) URLs: native webhook).",
)
@click.option("--allow-private-targets", is_flag=True, default=False, help="Allow loopback/private hosts.")
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the receiver."
)
@click.option("--json", "as_json", is_flag=True, help="Print the payload sent.")
def test_cmd(
    url: str, webhook_secret_file: str | None, allow_private_targets: bool, timeout: float, as_json: bool
) -> None:
    """Send one test notification to URL: exit 0 when it was taken, 1 with the receiver's error."""
    target = deliver.Target(deliver.kind_of(url), url, read_secret(webhook_secret_file))
    try:
        deliver.check_url(target)
    except deliver.ChannelUrlError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    sent = deliver.send_test(
        target,
        now=datetime.now(UTC).replace(tzinfo=None),
        dashboard_url="http://127.0.0.1:8080/",
        timeout_s=timeout,
        allow_private_targets=allow_private_targets,
    )
    body, outcome = sent.payload, sent.outcome
    if as_json:
        click.echo(json.dumps(body, indent=2))
    if not outcome.ok:
        click.echo(f"error: {outcome.answer}", err=True)
        raise SystemExit(1)
    click.echo(f"sent: {outcome.answer}")
