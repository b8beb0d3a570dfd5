"""The dashboard in a real headless Chromium: signed in through mailed links, real scans.

Debian's chromium (never a downloaded browser); skipped where it is missing. The overview's
screenshot is kept in artifacts/dashboard-overview.png.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.web.conftest import SITES, WebEnv

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
OWNER = "browser-owner@example.org"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def owner(web_env: WebEnv) -> dict[str, str]:
    """An account with every test site registered and scanned, plus a second (pending) key."""
    key = web_env.new_key(OWNER)
    with web_env.client() as client:
        for name in SITES:
            client.post("/api/v1.0/servers/add", json={"api_key": key, "domain": web_env.domain(name)})
    for name in SITES:
        web_env.wait_scanned(key, web_env.domain(name))
    return {"key": key}


def mailed_link(env: WebEnv, part: str, *, after: int = 0) -> str:
    mail = env.smtp.wait_for(
        lambda m: str(m["To"]) == OWNER and bool(env.smtp.links(m, part)), count=after + 1, timeout=20
    )
    return env.smtp.links(mail, part)[0]


def test_sign_in_overview_keys_and_settings(web_env: WebEnv, owner: dict[str, str], browser) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    asked = _same_origin_only(context, web_env.url)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())

    # Not signed in: the dashboard sends us to the sign-in form.
    page.goto(web_env.url + "/")
    assert "/signin" in page.url

    # The confirmation mail's link confirms the account (and signs in, or we sign in next).
    page.goto(mailed_link(web_env, "/confirm/"))
    page.click("button[type=submit]")
    page.wait_for_load_state()

    # The "mail me a sign-in link" form, then the mailed link.
    page.goto(web_env.url + "/signin")
    page.fill("input[name=email]", OWNER)
    page.click("button[type=submit]")
    page.goto(mailed_link(web_env, "/signin/"))
    page.click("button[type=submit]")
    page.wait_for_url(web_env.url + "/")

    # The overview: tiles from real scans of the test sites, the calendar, the incidents.
    started = time.perf_counter()
    page.goto(web_env.url + "/")
    took = time.perf_counter() - started
    tiles = {
        tile.get_attribute("data-tile"): int(tile.locator(".n").inner_text())
        for tile in page.locator(".tile").all()
    }
    assert tiles == {
        "expiring_7": 1,  # api.alpha.test, 5 days
        "expiring_28": 1,
        "expired": 1,  # old.alpha.test
        "stale": 0,
        "down": 0,
        "certificates": len(SITES),
    }
    bars = page.locator("svg.calendar rect")
    assert bars.count() >= 2  # www (90 d) and shop (40 d) land in future months
    assert "Keychest Test CA" in page.locator(".legend").inner_text()
    incidents = page.locator(".card", has_text="Incidents").inner_text()
    assert "old.alpha.test" in incidents and "api.alpha.test" in incidents
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)
    assert took < 5  # generous: the benchmark (bench/dashboard.py) measures it properly

    # Servers: search, the per-address state, a server page, its certificate.
    page.click("nav >> text=Servers")
    rows = page.locator("#servers tbody tr")
    assert rows.count() == len(SITES)
    page.fill("input[name=q]", "alpha")
    page.click("form.search button")
    assert page.locator("#servers tbody tr").count() == 3
    page.click(f"text={web_env.domain('www.alpha.test')}")
    assert page.locator("td.mono", has_text="127.0.0.1").count() == 1
    page.locator("a[href^='/certificates/']").first.click()
    assert "www.alpha.test" in page.locator(".facts").inner_text()
    assert "first seen" in page.locator(".timeline").inner_text()

    # API keys: a second key claimed for the same address waits for approval; approve it,
    # then revoke the first and see the REST API refuse it.
    second = web_env.new_key(OWNER)
    page.goto(web_env.url + "/keys")
    pending = page.locator(f"tr[data-key='{second[:8]}']")
    assert pending.locator(".badge").inner_text() == "pending"
    pending.locator("button", has_text="Approve").click()
    assert page.locator(f"tr[data-key='{second[:8]}'] .badge").inner_text() == "active"
    first = page.locator(f"tr[data-key='{owner['key'][:8]}']")
    assert first.locator("td.mono").nth(1).inner_text() == "127.0.0.1"  # last used from
    first.locator("button", has_text="Revoke").click()
    assert page.locator(f"tr[data-key='{owner['key'][:8]}'] .badge").inner_text() == "revoked"
    with web_env.client() as client:
        refused = client.get("/api/v1.0/user", params={"api_key": owner["key"]})
    assert refused.status_code == 403

    # Settings: change the expiry thresholds.
    page.click("nav >> text=Settings")
    page.fill("#expiry_thresholds", "21, 7, 2")
    page.click("button[value=save]")
    assert "Settings saved" in page.locator(".notice").first.inner_text()
    page.reload()
    assert page.input_value("#expiry_thresholds") == "21, 7, 2"
    page.fill("#expiry_thresholds", "0")
    page.click("button[value=save]")
    assert "threshold" in page.locator("[role=alert]").inner_text().lower()

    # Forms without this session's CSRF token are refused.
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    with httpx.Client(base_url=web_env.url, cookies=cookies) as client:
        forged = client.post("/settings", data={"expiry_thresholds": "1"})
    assert forged.status_code == 403
    session_cookie = next(c for c in context.cookies() if c["name"] == "keychest_session")
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Lax"
    # Every page above, its styles, script and favicon, came from this server alone.
    assert any(url.endswith("/static/favicon.svg") for url in asked)
    assert [url for url in asked if not url.startswith(web_env.url + "/")] == []
    context.close()


def _same_origin_only(context, origin: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Refuse every request to another host, as an intranet without Internet would, and keep
    the list of what the page asked for."""
    asked: list[str] = []

    def handle(route) -> None:  # type: ignore[no-untyped-def]
        url = route.request.url
        asked.append(url)
        if url.startswith(origin + "/") or url.startswith("data:") or url.startswith("blob:"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", handle)
    return asked


def test_api_docs_render_offline(web_env: WebEnv, browser) -> None:  # type: ignore[no-untyped-def]
    with web_env.client() as client:
        spec = client.get("/openapi.json").json()
    operations = sum(
        1
        for item in spec["paths"].values()
        for method in item
        if method in ("get", "head", "post", "put", "patch", "delete", "options")
    )
    assert operations > 0
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    asked = _same_origin_only(context, web_env.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(web_env.url + "/docs")
    page.wait_for_selector(".opblock")
    assert page.locator(".opblock").count() == operations
    assert page.locator(".opblock", has_text="/api/v1.0/servers/add").count() >= 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "docs-swagger.png"))

    page.goto(web_env.url + "/redoc")
    page.wait_for_selector("[data-section-id^='operation/']")
    assert page.locator("[data-section-id^='operation/']").count() == operations

    foreign = [url for url in asked if not url.startswith(web_env.url + "/") and not url.startswith("data:")]
    assert foreign == [], f"pages asked other hosts for {foreign}"
    assert errors == []
    context.close()
