"""What a newcomer meets first on the web side: API docs that work offline, a favicon, HTML
404 pages, sign-in that returns to the page asked for, and numbers that agree with the scanner.

Against the package's live `keychest serve` (tests/web/conftest.py). Sign-ins come from a
loopback address of their own, so the per-address sign-in limit is this module's alone.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest

from keychest.scan.runner import ScanOptions
from keychest.service.overview import Calendar
from keychest.web.dashboard import calendar_svg, days_left, expiry_class
from keychest.web.mailflow import safe_next
from tests.support.net import free_port
from tests.web.conftest import WebEnv

SOURCE_IP = "127.0.0.57"
OWNER = "first-run@example.org"
EVIL = [
    "//evil.example/x",
    "https://evil.example/",
    "/\\evil.example",
    "/\t/evil.example",
    "http:/x",
    "servers",
]


class _Links(HTMLParser):
    """Every URL an HTML page makes the browser load (src, href of link)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("src"):
            self.urls.append(str(values["src"]))
        if tag == "link" and values.get("href"):
            self.urls.append(str(values["href"]))


def _loaded_urls(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    # URLs inside the page's inline script (FastAPI's pages put the asset and spec URLs there).
    scripts = re.findall(r"""['"]((?:https?:)?//[^'"]+|/[^'"\s]*\.(?:js|css|json|png|ico))['"]""", html)
    return parser.urls + scripts


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_load_nothing_from_another_host(web_env: WebEnv, path: str) -> None:
    with web_env.client() as client:
        page = client.get(path)
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        urls = _loaded_urls(page.text)
        assert any(u.endswith(".js") for u in urls), urls
        for url in urls:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, f"{path} loads {url} from another host"
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 0


def test_favicon_is_served(web_env: WebEnv) -> None:
    with web_env.client() as client:
        icon = client.get("/favicon.ico")
        assert icon.status_code == 200
        assert icon.headers["content-type"] == "image/x-icon"
        assert icon.content[:4] == b"\x00\x00\x01\x00"  # ICO header
        svg = client.get("/static/favicon.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        # The pages name it, so browsers do not guess.
        assert 'rel="icon"' in client.get("/no/such/page").text
        assert 'rel="icon"' in client.get("/signin").text


def test_unknown_page_is_html_and_unknown_api_path_is_json(web_env: WebEnv) -> None:
    with web_env.client() as client:
        page = client.get("/no/such/page")
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert "Page not found" in page.text and "/no/such/page" in page.text
        escaped = client.get("/<script>x</script>")
        assert escaped.status_code == 404 and "<script>x" not in escaped.text
        api = client.get("/api/v1.0/no/such/route")
        assert api.status_code == 404
        assert api.headers["content-type"].startswith("application/json")
        api.json()


def test_safe_next_accepts_only_paths_of_this_site() -> None:
    assert safe_next("/servers") == "/servers"
    assert safe_next("/servers?q=alpha&sort=expiry") == "/servers?q=alpha&sort=expiry"
    for target in [*EVIL, "", None, "/a\nb", "/a\\b"]:
        assert safe_next(target) is None, target


def test_calendar_month_labels_carry_the_year_where_it_changes() -> None:
    months = [
        dt.datetime(2026, 11, 1),
        dt.datetime(2026, 12, 1),
        dt.datetime(2027, 1, 1),
        dt.datetime(2027, 2, 1),
    ]
    svg = str(calendar_svg(Calendar(months, [], [{} for _ in months], 0)))
    labels = re.findall(r'class="axis" text-anchor="middle">([^<]+)</text>', svg)
    assert labels == ["Nov 2026", "Dec", "Jan 2027", "Feb"]


def test_days_left_and_severity_are_the_scanners() -> None:
    now = dt.datetime(2026, 12, 1, 12, 0)
    assert days_left(now + dt.timedelta(days=4, hours=23), now) == "4 days"
    assert days_left(now + dt.timedelta(days=1, hours=2), now) == "1 day"
    assert days_left(now + dt.timedelta(hours=23), now) == "0 days"
    assert days_left(now - dt.timedelta(hours=1), now) == "expired today"
    assert days_left(now - dt.timedelta(days=10, seconds=1), now) == "expired 10 days ago"
    scan = ScanOptions(warn_days=30, crit_days=7)
    # Critical from the moment less than 7 x 24 h remain, warning under 30 days (docs/scan.md).
    assert expiry_class(now + dt.timedelta(days=7), now, scan) == "plan"
    assert expiry_class(now + dt.timedelta(days=6, hours=23), now, scan) == "soon"
    assert expiry_class(now + dt.timedelta(days=29), now, scan) == "plan"
    assert expiry_class(now + dt.timedelta(days=30), now, scan) == ""
    assert expiry_class(now - dt.timedelta(seconds=1), now, scan) == "expired"


# --- signed in --------------------------------------------------------------------------------


def _client(env: WebEnv) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=SOURCE_IP)
    return httpx.Client(base_url=env.url, timeout=10, transport=transport)


def _mails(env: WebEnv, part: str) -> int:
    return len(env.smtp.matching(lambda m: str(m["To"]) == OWNER and bool(env.smtp.links(m, part))))


def _mailed_link(env: WebEnv, part: str, count: int) -> str:
    mail = env.smtp.wait_for(
        lambda m: str(m["To"]) == OWNER and bool(env.smtp.links(m, part)), count=count, timeout=20
    )
    return urlsplit(env.smtp.links(mail, part)[0]).path


@pytest.fixture(scope="module")
def signed_in(web_env: WebEnv) -> Iterator[tuple[httpx.Client, str]]:
    """A confirmed account, signed in through /signin?next=..., with its key."""
    key = web_env.new_key(OWNER)
    with _client(web_env) as client:
        # The confirmation link signs in too: it lands where /signin?next= asked.
        assert client.get("/signin", params={"next": "/keys"}).status_code == 200
        confirm = _mailed_link(web_env, "/confirm/", 1)
        assert client.get(confirm).status_code == 200
        answer = client.post(confirm)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/keys"
        assert "keychest_next" not in client.cookies  # used once
        yield client, key


def test_signin_link_lands_on_the_page_asked_for(
    web_env: WebEnv, signed_in: tuple[httpx.Client, str]
) -> None:
    with _client(web_env) as client:
        # What the dashboard does to a visitor without a session.
        bounced = client.get("/servers", params={"q": "alpha"})
        assert bounced.status_code == 303
        signin = client.get(bounced.headers["location"])
        assert signin.status_code == 200
        before = _mails(web_env, "/signin/")
        assert client.post("/signin", data={"email": OWNER}).status_code == 200
        link = _mailed_link(web_env, "/signin/", before + 1)
        assert client.get(link).status_code == 200
        answer = client.post(link)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/servers?q=alpha"
        assert client.get("/servers", params={"q": "alpha"}).status_code == 200


def test_signin_refuses_to_send_anyone_elsewhere(
    web_env: WebEnv, signed_in: tuple[httpx.Client, str]
) -> None:
    for target in EVIL:
        with _client(web_env) as client:
            client.get("/signin", params={"next": target})
            assert "keychest_next" not in client.cookies, target
    # A cookie that says otherwise (set by no page of ours) is not followed either.
    with _client(web_env) as client:
        client.cookies.set("keychest_next", "%2F%2Fevil.example")
        before = _mails(web_env, "/signin/")
        assert client.post("/signin", data={"email": OWNER}).status_code == 200
        link = _mailed_link(web_env, "/signin/", before + 1)
        answer = client.post(link)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"


def _incident_rows(client: httpx.Client) -> list[str]:
    html = client.get("/").text
    body = html.split("<h2>Incidents</h2>", 1)[1]
    return re.findall(r'<a href="/servers/\d+">([^<]+)</a>', body)


def test_dashboard_numbers_and_incident_order(web_env: WebEnv, signed_in: tuple[httpx.Client, str]) -> None:
    client, key = signed_in
    down = f"www.alpha.test:{free_port()}"  # resolves, nothing listens: unreachable
    names = [web_env.domain("api.alpha.test"), web_env.domain("old.alpha.test"), down]
    with web_env.client() as rest:
        for name in names:
            answer = rest.post("/api/v1.0/servers/add", json={"api_key": key, "domain": name})
            assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 30
    while len(rows := _incident_rows(client)) < 3:
        assert time.monotonic() < deadline, f"incidents not all scanned: {rows}"
        time.sleep(0.2)
    # Same severity (critical): the certificates about to expire first, earliest first, then
    # the name nothing answers for.
    assert rows == [web_env.domain("old.alpha.test"), web_env.domain("api.alpha.test"), down]
    # api.alpha.test was issued with 5 days left when the package started: now 4 days and hours.
    page = client.get("/servers", params={"q": "api.alpha"}).text
    assert re.search(r'class="soon"[^>]*>4 days<', page), page
