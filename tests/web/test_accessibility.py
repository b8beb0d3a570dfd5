"""Issue 17: every dashboard and mailed-link page at desktop (1400 px) and phone (390 px)
widths, in Debian's Chromium, checked by axe-core (vendored in tests/web/vendor, never
fetched): no serious or critical violation; at 390 px no page wider than the screen and the
navigation reachable. Then the script-free path: a destructive form asks on a page of its own.

The acknowledge pages of alerts (issue 12, reached from a real webhook's ack_url) are
checked as well.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.notify.receiver import Receiver, receiver
from tests.web.conftest import SITES, WebEnv
from tests.web.test_dashboard_browser import ARGS, ARTIFACTS, CHROMIUM, pytestmark  # noqa: F401  (same skips)

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
EMAIL = "a11y-owner@example.org"
WIDTHS = (1400, 390)
NAV = ("/", "/servers", "/keys", "/settings")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def mailed(env: WebEnv, part: str, count: int = 1) -> str:
    mail = env.smtp.wait_for(
        lambda m: str(m["To"]) == EMAIL and bool(env.smtp.links(m, part)), count=count, timeout=20
    )
    return env.smtp.links(mail, part)[0]


def serious(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=AXE.read_text())
    found = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


def check(page: Any, what: str, failures: list[str], *, nav: bool = True) -> None:
    """This page at both widths: axe, then at the phone width overflow and navigation."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        failures += [f"{what} @{width}: {v}" for v in serious(page)]
        if width > 600:
            continue
        wide = page.evaluate("document.documentElement.scrollWidth")
        if wide > width:
            failures.append(f"{what} @{width}: page is {wide} px wide")
        if not nav:
            continue
        for href in NAV:
            link = page.locator(f"nav[aria-label=Main] a[href='{href}']")
            box = link.bounding_box() if link.is_visible() else None
            if box is None or box["x"] < 0 or box["x"] + box["width"] > width:
                failures.append(f"{what} @{width}: navigation link {href} not reachable")


def ack_event(hook: Receiver, timeout: float = 60) -> dict[str, Any]:
    """The first notification the receiver got that carries an ack_url."""
    deadline = time.monotonic() + timeout
    count = 1
    while True:
        got = hook.wait_for(count, timeout=max(0.1, deadline - time.monotonic()))
        for request in got:
            body = json.loads(request.body)
            if body.get("ack_url"):
                return dict(body)
        count = len(got) + 1


def test_every_page_at_desktop_and_phone_width(web_env: WebEnv, chromium: Any) -> None:
    key = web_env.new_key(EMAIL)
    with web_env.client() as client:
        for name in SITES:
            client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": web_env.domain(name)})
    for name in SITES:
        web_env.wait_scanned(key, web_env.domain(name))

    # CSP allows no inline script; axe is injected inline, so this context alone bypasses it.
    context = chromium.new_context(viewport={"width": WIDTHS[0], "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    failures: list[str] = []

    # Mailed-link pages: the account confirmation, the sign-in form, its answer, the sign-in
    # link and, used once already, the link's refusal.
    page.goto(mailed(web_env, "/confirm/"))
    check(page, "mailed confirm link", failures, nav=False)
    page.click("button[type=submit]")
    page.goto(web_env.url + "/signin")
    check(page, "sign-in form", failures, nav=False)
    page.fill("input[name=email]", "not an address")
    page.evaluate("document.querySelector('form').noValidate = true")
    page.click("button[type=submit]")
    assert page.get_attribute("#email", "aria-invalid") == "true"
    check(page, "sign-in form with an error", failures, nav=False)
    page.fill("input[name=email]", EMAIL)
    page.click("button[type=submit]")
    check(page, "sign-in link sent", failures, nav=False)
    link = mailed(web_env, "/signin/")
    page.goto(link)
    check(page, "mailed sign-in link", failures, nav=False)
    page.click("button[type=submit]")
    page.wait_for_url(web_env.url + "/")
    page.goto(link)
    check(page, "used mailed link", failures, nav=False)

    # The dashboard, signed in.
    page.goto(web_env.url + "/servers?q=www.alpha")
    server = page.locator("#servers tbody a").first.get_attribute("href")
    page.goto(web_env.url + str(server))
    certificate = page.locator("a[href^='/certificates/']").first.get_attribute("href")
    for path in ("/", "/servers", str(server), str(certificate), "/keys", "/settings", "/no-such-page"):
        page.goto(web_env.url + path)
        check(page, path, failures, nav=path != "/no-such-page")
    # Issue 12: the settings with a channel, a server page with a snooze, and an alert's
    # acknowledge page reached from the ack_url a real webhook receiver got.
    with receiver() as hook:
        page.goto(web_env.url + "/settings")
        page.fill("#channel_url", hook.url + "/in")
        page.click("#channels form.settings button.primary")
        page.wait_for_selector("#channel-secret")
        check(page, "settings with a channel", failures)
        # A server whose certificate does not name it (an IP address): a certificate.invalid
        # incident, whose alert carries an ack_url.
        wrong_name = "127.0.0.1:" + web_env.domain("www.alpha.test").rsplit(":", 1)[1]
        with web_env.client() as client:
            added = client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": wrong_name})
            assert added.status_code == 200, added.text
        event = ack_event(hook)
        page.goto(web_env.url + "/servers?q=old.alpha")
        expired = str(page.locator("#servers tbody a").first.get_attribute("href"))
        page.goto(web_env.url + expired)
        page.fill("#snooze_days", "2")
        page.click("#alerts form[action$='/snooze'] button")
        page.wait_for_selector("#alerts tbody tr")
        check(page, "server with a snooze", failures)
    assert event["ack_url"].startswith(web_env.url + "/ack/"), event
    page.goto(event["ack_url"])
    check(page, "acknowledge page", failures, nav=False)
    page.click("button[type=submit]")
    page.wait_for_selector("text=Acknowledged")
    check(page, "acknowledged", failures, nav=False)
    page.goto(event["ack_url"])
    check(page, "used acknowledge link", failures, nav=False)
    page.goto(web_env.url + "/")
    page.click("details.numbers summary")
    check(page, "overview with the calendar's numbers", failures)
    # At 390 px (where check() left the page) the chart's labels stay readable, and "just now"
    # and the like stay on one line.
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-overview-390.png"), full_page=True)
    label = page.locator("svg.calendar text.axis").first.bounding_box()
    assert label is not None and label["height"] >= 10, label
    assert page.locator("td.nowrap").first.evaluate("e => getComputedStyle(e).whiteSpace") == "nowrap"
    page.goto(web_env.url + "/servers")
    page.screenshot(path=str(ARTIFACTS / "dashboard-servers-390.png"), full_page=True)
    assert page.locator("td.pills").first.evaluate("e => getComputedStyle(e).display") == "table-cell"
    # 24-hour times, the settings form included (no AM/PM time picker).
    page.goto(web_env.url + "/settings")
    assert page.get_attribute("#weekly_time", "type") in (None, "text")
    assert page.input_value("#weekly_time").count(":") == 1
    assert (
        page.locator("label[for=alerts_enabled]").count() + page.locator("label:has(#alerts_enabled)").count()
        == 1
    )

    # Failed forms: the field is marked, described by the message and has the focus.
    page.goto(web_env.url + "/servers")
    page.fill("#domain", "not a server name!")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("form.add-form button")
    # Refused forms redirect back (POST, redirect, GET): a reload sends nothing again.
    assert posted.value.status == 303
    page.wait_for_selector("#domain-error")
    assert page.get_attribute("#domain", "aria-invalid") == "true"
    assert page.get_attribute("#domain", "aria-describedby") == "domain-error"
    assert page.evaluate("document.activeElement.id") == "domain"
    check(page, "servers with an error", failures)
    page.goto(web_env.url + "/settings")
    page.fill("#expiry_thresholds", "0")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("button[value=save]")
    assert posted.value.status == 303
    page.wait_for_selector("#settings-error")
    assert page.get_attribute("#expiry_thresholds", "aria-invalid") == "true"
    assert "settings-error" in (page.get_attribute("#expiry_thresholds", "aria-describedby") or "")
    assert page.evaluate("document.activeElement.id") == "expiry_thresholds"
    assert page.input_value("#expiry_thresholds") == "0"  # what was typed comes back
    check(page, "settings with an error", failures)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.method))
    page.reload()
    assert "POST" not in sent and page.locator("[role=alert]").count() == 0

    # The server's own "are you sure?" page (what a browser without script gets).
    page.goto(web_env.url + "/keys")
    page.evaluate("() => { const f = document.querySelector('form[data-confirm]');"
                  " f.removeAttribute('data-confirm'); f.requestSubmit(); }")  # fmt: skip
    page.wait_for_selector("button.danger.solid")
    check(page, "confirmation page", failures)

    context.close()
    assert failures == [], "\n".join(failures)


def test_remove_without_javascript_asks_first(web_env: WebEnv, chromium: Any) -> None:
    """With script off, "Remove" only asks; the server goes only from the confirmation page."""
    email = "nojs-owner@example.org"
    key = web_env.new_key(email)
    with web_env.client() as client:
        answer = client.post(
            "/api/v1.0/servers/add", json={"api_key": key, "domain": web_env.domain("shop.beta.test")}
        )
        assert answer.status_code == 200, answer.text
    context = chromium.new_context(java_script_enabled=False, viewport={"width": 390, "height": 800})
    page = context.new_page()
    mail = web_env.smtp.wait_for(
        lambda m: str(m["To"]) == email and bool(web_env.smtp.links(m, "/confirm/")), timeout=20
    )
    page.goto(web_env.smtp.links(mail, "/confirm/")[0])
    page.click("button[type=submit]")
    page.wait_for_url(web_env.url + "/")

    page.goto(web_env.url + "/servers")
    assert page.locator("#servers tbody tr").count() == 1
    page.click("#servers button:has-text('Remove')")
    assert "Stop watching shop.beta.test" in page.locator("h1").inner_text()
    # Cancel leads back, and the server is still there.
    page.click("text=Cancel, keep it")
    page.goto(web_env.url + "/servers")
    assert page.locator("#servers tbody tr").count() == 1
    page.click("#servers button:has-text('Remove')")
    page.click("button:has-text('Remove server')")
    page.wait_for_url("**/servers?done=removed")
    assert page.locator("#servers tbody tr").count() == 0
    context.close()
