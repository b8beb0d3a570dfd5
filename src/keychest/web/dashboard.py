"""The dashboard: server-rendered pages for a signed-in account.

No build step and almost no JavaScript: Jinja2 templates, one CSS file, one tiny script (a
confirmation before destructive forms). Sessions are the signed cookies of ``web.session``,
made by the mailed sign-in links (``web.mailflow``); every form carries the session's CSRF
token. The pages read through ``service.overview`` (aggregates in SQL, paged tables) and
change things through ``service.endpoints`` and ``service.preferences``.
"""

from __future__ import annotations

import weakref
import zoneinfo
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool

from keychest.notify import deliver
from keychest.notify import events as event_rules
from keychest.scan.judge import days_left as judge_days_left
from keychest.scan.model import ScanOptions
from keychest.service import (
    certificates,
    channels,
    endpoints,
    errors,
    heartbeats,
    incidents,
    overview,
    preferences,
    renewals,
    secrets,
)
from keychest.service.context import Ctx
from keychest.service.errors import ServiceError
from keychest.service.facade import Keychest
from keychest.service.scans import rescan_for_account
from keychest.web import session

P = ParamSpec("P")
T = TypeVar("T")

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))

# Issuer colours of the renewal calendar, in stacking order; "other" is always grey.
PALETTE = ("#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2")
OTHER_COLOUR = "#94a3b8"
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NOTICES = {
    "added": "Server added; its first scan starts within seconds.",
    "exists": "That server is already watched.",
    "removed": "Server removed.",
    "rescan": "Scan requested: it starts within seconds. Reload this page to see its results.",
    "revoked": "API key revoked.",
    "approved": "API key approved.",
    "saved": "Settings saved.",
    "unsubscribed": "You will get no more alerts or weekly reports. Turn them back on here at any time.",
    "channel_added": "Channel added.",
    "channel_removed": "Channel removed: its queued alerts are dropped.",
    "snoozed": "Alerts for this server are held; they go out afterwards only if still true.",
    "window_added": "Maintenance window added.",
    "hold_removed": "Snooze or window ended: alerts flow again.",
    "acknowledged": "Open incidents acknowledged: they are not repeated unless they change or get worse.",
}
# What a channel may ask for in the settings form ("test" is the test message: always sent).
CHANNEL_EVENT_TYPES = tuple(t for t in event_rules.EVENT_TYPES if t != event_rules.TEST)
SECURITY_HEADERS = {
    # Nothing inline, nothing from elsewhere: the pages need only their own CSS and script.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# --- formatting --------------------------------------------------------------------------------


def fmt_time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


def fmt_date(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d") if moment else "—"


def _days(count: int) -> str:
    return f"{count} day" if count == 1 else f"{count} days"


def days_left(moment: datetime | None, now: datetime) -> str:
    """The scanner's documented number (whole days, rounded down), so every view agrees."""
    if moment is None:
        return "—"
    if moment <= now:
        ago_days = (now - moment) // timedelta(days=1)
        return "expired today" if ago_days == 0 else f"expired {_days(ago_days)} ago"
    return _days(judge_days_left(moment, now))


# A process whose heartbeat (every 10 s) or main loop's pass is older than this is shown as
# stale on the overview: dead, hung, or cut off from the database.
PROCESS_STALE_S = 60.0
PASS_STALE_S = 120.0


def process_stale(process: heartbeats.HeartbeatView) -> bool:
    return process.age_s > PROCESS_STALE_S or (process.pass_age_s or 0.0) > PASS_STALE_S


def seconds_text(seconds: float | None) -> str:
    """An age in the largest whole unit that fits: "42 s", "5 min", "3 h", "2 d"."""
    if seconds is None:
        return "no pass yet"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


def expiry_class(moment: datetime | None, now: datetime, scan: ScanOptions) -> str:
    """The scanner's severity of this expiry: critical ("soon") under --crit-days, warning
    ("plan") under --warn-days, as docs/scan.md defines them on ``days_left``."""
    if moment is None:
        return ""
    if moment <= now:
        return "expired"
    left = judge_days_left(moment, now)
    return "soon" if left < scan.crit_days else "plan" if left < scan.warn_days else ""


def calendar_svg(cal: overview.Calendar) -> Markup:
    """The renewal calendar as inline SVG: one stacked bar per month, one colour per issuer."""
    width, height, left, bottom, top = 720, 220, 34, 26, 14
    plot_h = height - bottom - top
    slot = (width - left) / max(1, len(cal.months))
    bar_w = slot * 0.62
    peak = max(1, cal.peak)
    step = max(1, -(-peak // 4))
    scale_max = step * 4
    colours = _colours(cal.issuers)
    parts = [
        f'<svg class="calendar" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Certificates expiring per month, by issuer" xmlns="http://www.w3.org/2000/svg">'
    ]
    for tick in range(0, scale_max + 1, step):
        y = top + plot_h - plot_h * tick / scale_max
        parts.append(f'<line x1="{left}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{tick}</text>')
    for index, (month, counts) in enumerate(zip(cal.months, cal.counts, strict=True)):
        x = left + slot * index + (slot - bar_w) / 2
        y = top + plot_h
        for issuer in cal.issuers:
            count = counts.get(issuer, 0)
            if not count:
                continue
            h = plot_h * count / scale_max
            y -= h
            label = escape(f"{month:%B %Y}: {count} from {issuer}")
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" rx="2" '
                f'fill="{colours[issuer]}"><title>{label}</title></rect>'
            )
        total = sum(counts.values())
        if total:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{y - 4:.1f}" class="total" '
                f'text-anchor="middle">{total}</text>'
            )
        # The year wherever it changes, so December and the January after it are not misread.
        axis = f"{month:%b %Y}" if index == 0 or month.month == 1 else f"{month:%b}"
        parts.append(
            f'<text x="{x + bar_w / 2:.1f}" y="{height - 8}" class="axis" text-anchor="middle">{axis}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _colours(issuers: list[str]) -> dict[str, str]:
    named = [i for i in issuers if i != "other"]
    colours = {issuer: PALETTE[i % len(PALETTE)] for i, issuer in enumerate(named)}
    colours["other"] = OTHER_COLOUR
    return colours


def swatch(colour: str) -> Markup:
    return Markup(
        f'<svg class="swatch" viewBox="0 0 10 10" aria-hidden="true"><rect width="10" height="10" rx="2" '
        f'fill="{escape(colour)}"/></svg>'
    )


TEMPLATES.env.filters.update(time=fmt_time, date=fmt_date)
TEMPLATES.env.globals.update(swatch=swatch, WEEKDAYS=WEEKDAYS)


# --- plumbing ----------------------------------------------------------------------------------


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


class Pages:
    def __init__(self, service: Keychest) -> None:
        self.service = service

    def signed_in(self, request: Request) -> int | None:
        return session.current_account_id(self.service, request)

    def to_signin(self, request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)

    async def db(
        self, request: Request, fn: Callable[Concatenate[Ctx, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """A service call for the request's client, off the event loop."""
        return await run_in_threadpool(self.service.from_ip(_ip(request)).call, fn, *args, **kwargs)

    def render(
        self, request: Request, name: str, account: overview.AccountInfo, status: int = 200, **values: Any
    ) -> HTMLResponse:
        now = self.service.clock()
        notice = NOTICES.get(request.query_params.get("done", ""))
        context = {
            "account": account,
            "csrf": session.csrf_token(self.service, request),
            "now": now,
            "notice": notice,
            "days_left": lambda m: days_left(m, now),
            "ago": lambda m: ago(m, now),
            "expiry_class": lambda m: expiry_class(m, now, self.service.settings.scan),
            **values,
        }
        response = TEMPLATES.TemplateResponse(request, f"dashboard/{name}", context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def form(self, request: Request) -> dict[str, str] | None:
        """The submitted form, or None when its CSRF token is not this session's."""
        data = await request.form()
        values = {k: v for k, v in data.items() if isinstance(v, str)}
        if not session.csrf_ok(self.service, request, values.get("csrf")):
            return None
        return values


def _forbidden() -> Response:
    return HTMLResponse(
        "<h1>Form expired</h1><p>Reload the page and try again.</p>",
        status_code=403,
        headers=SECURITY_HEADERS,
    )


def _failed(exc: ServiceError) -> HTMLResponse:
    """A service refusal of a form that has no page to go back to with its message."""
    return HTMLResponse(escape(exc.text), status_code=exc.code, headers=SECURITY_HEADERS)


def _missing(
    pages: Pages, request: Request, account: overview.AccountInfo, page: str, what: str
) -> HTMLResponse:
    return pages.render(request, "missing.html", account, status=404, page=page, what=what)


def _confirm(
    pages: Pages,
    request: Request,
    account: overview.AccountInfo,
    *,
    question: str,
    detail: str,
    button: str,
    back: str,
    page: str,
    hidden: dict[str, str] | None = None,
) -> HTMLResponse:
    """The server's "are you sure?" before a destructive form acts; its button posts the same
    form again with ``confirmed=yes``. Rendering it changes nothing, so a reload is harmless."""
    return pages.render(
        request,
        "confirm.html",
        account,
        page=page,
        action=request.url.path,
        question=question,
        detail=detail,
        button=button,
        back=back,
        hidden=hidden or {},
    )


# A refused form is answered with a redirect back to its page (so a reload does not send it
# again); what was typed and the refusal travel in this short-lived signed cookie.
FORM_COOKIE = "keychest_form"
FORM_MAX_AGE_S = 300
_FORM_SERIALIZERS: weakref.WeakKeyDictionary[Keychest, URLSafeTimedSerializer] = weakref.WeakKeyDictionary()


def _form_serializer(service: Keychest) -> URLSafeTimedSerializer:
    cached = _FORM_SERIALIZERS.get(service)
    if cached is None:
        secret = service.call(secrets.get_or_create, "session")
        cached = _FORM_SERIALIZERS[service] = URLSafeTimedSerializer(secret, salt="keychest-form")
    return cached


def _refused(service: Keychest, path: str, form: str, error: str, typed: dict[str, str]) -> RedirectResponse:
    response = RedirectResponse(path, status_code=303)
    value = _form_serializer(service).dumps({"form": form, "error": error[:500], "typed": typed})
    secure = service.settings.mail.public_url.startswith("https://")
    response.set_cookie(
        FORM_COOKIE, value, max_age=FORM_MAX_AGE_S, httponly=True, samesite="lax", secure=secure, path="/"
    )
    return response


def _take_refusal(service: Keychest, request: Request, form: str) -> tuple[str, dict[str, str]] | None:
    """The refusal of ``form`` redirected here, if any: its message and what was typed."""
    value = request.cookies.get(FORM_COOKIE)
    if not value:
        return None
    try:
        data = _form_serializer(service).loads(value, max_age=FORM_MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(data, dict) or data.get("form") != form:
        return None
    typed = data.get("typed")
    typed = {k: v for k, v in typed.items() if isinstance(v, str)} if isinstance(typed, dict) else {}
    return str(data.get("error", "")), typed


def _shown(response: HTMLResponse, *refusals: object) -> HTMLResponse:
    """The page, which has now shown the refusals redirected to it: their cookie goes."""
    if any(refusals):
        response.delete_cookie(FORM_COOKIE, path="/")
    return response


def _back(path: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{path}{'&' if '?' in path else '?'}done={done}", status_code=303)


def install(app: FastAPI, service: Keychest) -> None:
    pages = Pages(service)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    async def account_or_none(request: Request) -> overview.AccountInfo | None:
        # Checking the cookie's session version reads the database: off the event loop.
        account_id = await run_in_threadpool(pages.signed_in, request)
        if account_id is None:
            return None
        try:
            return await pages.db(request, overview.account, account_id)
        except ServiceError:
            return None  # deleted or blocked since the cookie was made

    async def account_and_form(request: Request) -> tuple[overview.AccountInfo, dict[str, str]] | Response:
        """A form post's prologue: the signed-in account and its CSRF-checked form, or the
        answer to send instead (to the sign-in page, or the expired-form page)."""
        account = await account_or_none(request)
        if account is None:
            return pages.to_signin(request)
        form = await pages.form(request)
        if form is None:
            return _forbidden()
        return account, form

    async def act(
        request: Request,
        back: str,
        done: str,
        fn: Callable[Concatenate[Ctx, P], object],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Response:
        """A form's service call, then back to ``back`` saying ``done`` (a refusal is the answer)."""
        try:
            await pages.db(request, fn, *args, **kwargs)
        except ServiceError as exc:
            return _failed(exc)
        return _back(back, done)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home(request: Request) -> Response:
        account = await account_or_none(request)
        if account is None:
            return pages.to_signin(request)
        data: overview.Overview = await pages.db(request, overview.overview, account.id)
        colours = _colours(data.calendar.issuers)
        processes = await pages.db(request, heartbeats.heartbeats)
        return pages.render(
            request,
            "overview.html",
            account,
            page="overview",
            data=data,
            calendar=calendar_svg(data.calendar),
            calendar_rows=list(zip(data.calendar.months, data.calendar.counts, strict=True)),
            legend=[(issuer, colours[issuer]) for issuer in data.calendar.issuers],
            processes=processes,
            process_stale=process_stale,
            stale_count=sum(process_stale(p) for p in processes),
            seconds_text=seconds_text,
        )

    @app.get("/servers", response_class=HTMLResponse, include_in_schema=False)
    async def servers_list(
        request: Request, q: str = "", sort: str = "expiry", desc: int = 0, p: int = 1
    ) -> Response:
        account = await account_or_none(request)
        if account is None:
            return pages.to_signin(request)
        listing = await pages.db(
            request,
            lambda ctx: overview.servers_page(
                ctx, account.id, query=q[:200], sort=sort, descending=bool(desc), page=p
            ),
        )
        refusal = _take_refusal(service, request, "add")
        return _shown(
            pages.render(
                request,
                "servers.html",
                account,
                page="servers",
                listing=listing,
                error=refusal[0] if refusal else None,
                typed=refusal[1].get("domain", "") if refusal else "",
            ),
            refusal,
        )

    @app.post("/servers/add", include_in_schema=False)
    async def servers_add(request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account, form = got
        try:
            outcome = await pages.db(request, endpoints.add_for_account, account.id, form.get("domain", ""))
        except ServiceError as exc:
            return _refused(service, "/servers", "add", exc.text, {"domain": form.get("domain", "")[:300]})
        return _back("/servers", "added" if outcome.created else "exists")

    @app.post("/servers/{endpoint_id}/remove", include_in_schema=False)
    async def servers_remove(endpoint_id: int, request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account, form = got
        if form.get("confirmed") != "yes":
            try:
                detail = await pages.db(request, overview.server_detail, account.id, endpoint_id)
            except ServiceError:
                return _missing(pages, request, account, "servers", "server")
            return _confirm(
                pages,
                request,
                account,
                question=f"Stop watching {detail.domain}?",
                detail="keychest stops scanning it and alerting about it. Its history goes with it.",
                button="Remove server",
                back=f"/servers/{endpoint_id}",
                page="servers",
            )
        return await act(
            request, "/servers", "removed", endpoints.remove_for_account, account.id, endpoint_id
        )

    @app.post("/servers/{endpoint_id}/rescan", include_in_schema=False)
    async def servers_rescan(endpoint_id: int, request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account = got[0]
        return await act(
            request, f"/servers/{endpoint_id}", "rescan", rescan_for_account, account.id, endpoint_id
        )

    @app.get("/servers/{endpoint_id}", response_class=HTMLResponse, include_in_schema=False)
    async def server_page(endpoint_id: int, request: Request) -> Response:
        account = await account_or_none(request)
        if account is None:
            return pages.to_signin(request)
        try:
            detail = await pages.db(request, overview.server_detail, account.id, endpoint_id)
            renewal = await pages.db(request, renewals.last_renewal_for_account, account.id, endpoint_id)
            holds = await pages.db(request, incidents.server_holds, account.id, endpoint_id)
            open_incidents = await pages.db(request, incidents.server_incidents, account.id, endpoint_id)
        except ServiceError:
            return _missing(pages, request, account, "servers", "server")
        refusal = _take_refusal(service, request, "holds")
        return _shown(
            pages.render(
                request,
                "server.html",
                account,
                page="servers",
                server=detail,
                renewal=renewal,
                holds=holds,
                open_incidents=open_incidents,
                hold_error=refusal[0] if refusal else None,
                hold_typed=refusal[1] if refusal else {},
            ),
            refusal,
        )

    @app.get("/certificates/{sha256}", response_class=HTMLResponse, include_in_schema=False)
    async def certificate_page(sha256: str, request: Request) -> Response:
        account = await account_or_none(request)
        if account is None:
            return pages.to_signin(request)
        try:
            detail = await pages.db(request, certificates.detail_for_account, account.id, sha256[:64])
        except ServiceError:
            return _missing(pages, request, account, "servers", "certificate")
        return pages.render(request, "certificate.html", account, page="servers", cert=detail)

    @app.get("/keys", response_class=HTMLResponse, include_in_schema=False)
    async def keys_page(request: Request) -> Response:
        account = await account_or_none(request)
        if account is None:
            return pages.to_signin(request)
        lines = await pages.db(request, overview.key_lines, account.id)
        return pages.render(request, "keys.html", account, page="keys", keys=lines)

    async def key_action(request: Request, key_id: int, fn: Any, done: str) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account, form = got
        if done == "revoked" and form.get("confirmed") != "yes":
            lines = await pages.db(request, overview.key_lines, account.id)
            key = next((line for line in lines if line.id == key_id), None)
            if key is None:
                return HTMLResponse("no such key", status_code=404, headers=SECURITY_HEADERS)
            return _confirm(
                pages,
                request,
                account,
                question=f"Revoke API key {key.prefix}…?",
                detail="It stops working at once: machines using it can no longer register servers.",
                button="Revoke key",
                back="/keys",
                page="keys",
            )
        try:
            await pages.db(request, fn, account.id, key_id)
        except ServiceError as exc:
            return _failed(exc)
        response = _back("/keys", done)
        if done == "revoked":
            # Revoking a key ends every session of the account; the one that did it goes on.
            secure = service.settings.mail.public_url.startswith("https://")
            await run_in_threadpool(session.sign_in, service, response, account.id, secure=secure)
        return response

    @app.post("/keys/{key_id}/revoke", include_in_schema=False)
    async def key_revoke(key_id: int, request: Request) -> Response:
        return await key_action(request, key_id, endpoints.revoke_account_key, "revoked")

    @app.post("/keys/{key_id}/approve", include_in_schema=False)
    async def key_approve(key_id: int, request: Request) -> Response:
        return await key_action(request, key_id, endpoints.approve_account_key, "approved")

    @app.get("/settings", response_class=HTMLResponse, include_in_schema=False)
    async def settings_page(request: Request) -> Response:
        account = await account_or_none(request)
        if account is None:
            return pages.to_signin(request)
        prefs = await pages.db(request, preferences.get, account.id)
        listed = await pages.db(request, channels.for_account, account.id)
        refusal = _take_refusal(service, request, "settings")
        said = _take_refusal(service, request, "channels")
        return _shown(
            pages.render(
                request,
                "settings.html",
                account,
                **_settings_values(prefs, refusal[0] if refusal else None, refusal[1] if refusal else None),
                channels=listed,
                event_types=CHANNEL_EVENT_TYPES,
                channel_said=said[0] if said else None,
                channel_said_ok=bool(said and said[1].get("ok")),
                channel_secret=said[1].get("secret") if said else None,
                channel_typed=said[1] if said else {},
            ),
            refusal,
            said,
        )

    @app.post("/settings", include_in_schema=False)
    async def settings_save(request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account, form = got
        if form.get("action") == "unsubscribe" and form.get("confirmed") != "yes":
            return _confirm(
                pages,
                request,
                account,
                question="Stop all alerts and weekly reports?",
                detail="Your servers stay watched here; turn the mail back on in the settings at any time.",
                button="Unsubscribe from all mail",
                back="/settings",
                page="settings",
                hidden={"action": "unsubscribe"},
            )
        if form.get("action") == "unsubscribe":
            changes: dict[str, Any] = {"alerts_enabled": False, "weekly_enabled": False}
        else:
            try:
                day = int(form.get("weekly_day", "0"))
            except ValueError:
                day = -1  # refused by preferences.update with its own message
            changes = {
                "notify_email": form.get("notify_email", "").strip() or None,
                "expiry_thresholds": form.get("expiry_thresholds", ""),
                "alerts_enabled": form.get("alerts_enabled") == "on",
                "weekly_enabled": form.get("weekly_enabled") == "on",
                "weekly_day": day,
                "weekly_time": form.get("weekly_time", ""),
                "timezone": form.get("timezone", "").strip(),
            }
        try:
            await pages.db(request, lambda ctx: preferences.update(ctx, account.id, **changes))
        except ServiceError as exc:
            typed: dict[str, str] = {
                k: form[k][:300]
                for k in ("notify_email", "expiry_thresholds", "weekly_time", "timezone")
                if k in form
            }
            return _refused(service, "/settings", "settings", exc.text, typed)
        return _back("/settings", "unsubscribed" if form.get("action") == "unsubscribe" else "saved")

    # --- alert channels (settings) and holds (server page): the service calls REST makes -----

    @app.post("/settings/channels", include_in_schema=False)
    async def channel_add(request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account, form = got
        url = form.get("url", "").strip()
        secret = form.get("secret", "").strip() or None
        types = tuple(t for t in (await request.form()).getlist("event_types") if isinstance(t, str))
        kind = deliver.kind_of(url)
        typed = {"url": url[:500], "min_severity": form.get("min_severity", ""), "types": ",".join(types)}
        try:
            new = channels.NewChannel(kind, url, secret, form.get("min_severity", "warning"), types)
            # The guard resolves the URL's host: off the event loop, outside any transaction.
            checked = await run_in_threadpool(
                channels.check, new, allow_private_targets=service.settings.scan.allow_private_targets
            )
            created = await pages.db(request, channels.add_for_account, account.id, checked)
        except ServiceError as exc:
            return _refused(service, "/settings#channels", "channels", exc.text, typed)
        if created.secret is not None and secret is None:
            # A secret keychest made: shown this once (the signed, short-lived form cookie of
            # this browser carries it to the page), never again.
            note = "Channel added. Its signing secret, shown only now: verify webhook-signature with it."
            return _refused(
                service, "/settings#channels", "channels", note, {"ok": "1", "secret": created.secret}
            )
        return _back("/settings", "channel_added")

    @app.post("/settings/channels/{channel_id}/test", include_in_schema=False)
    async def channel_test(channel_id: int, request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account = got[0]
        try:
            target = await pages.db(request, channels.test_target_for_account, account.id, channel_id)
        except ServiceError as exc:
            return _refused(service, "/settings#channels", "channels", exc.text, {})
        outcome = await run_in_threadpool(channels.send_test, service.settings, target, service.clock())
        if outcome.ok:
            text = f"Test sent: the receiver accepted it ({outcome.answer})."
            return _refused(service, "/settings#channels", "channels", text, {"ok": "1"})
        return _refused(service, "/settings#channels", "channels", f"Test failed: {outcome.answer}", {})

    @app.post("/settings/channels/{channel_id}/remove", include_in_schema=False)
    async def channel_remove(channel_id: int, request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account, form = got
        if form.get("confirmed") != "yes":
            listed = await pages.db(request, channels.for_account, account.id)
            found = next((c for c in listed if c.id == channel_id), None)
            if found is None:
                return _missing(pages, request, account, "settings", "channel")
            return _confirm(
                pages,
                request,
                account,
                question=f"Remove the channel {found.label}?",
                detail="It gets no more alerts; those queued for it are dropped.",
                button="Remove channel",
                back="/settings#channels",
                page="settings",
            )
        return await act(
            request, "/settings", "channel_removed", channels.remove_for_account, account.id, channel_id
        )

    @app.post("/servers/{endpoint_id}/snooze", include_in_schema=False)
    async def server_snooze(endpoint_id: int, request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account, form = got
        back = f"/servers/{endpoint_id}"
        try:
            days = float(form.get("days", ""))
        except ValueError:
            return _refused(
                service,
                back + "#alerts",
                "holds",
                "days must be a number",
                {"days": form.get("days", "")[:20]},
            )
        try:
            await pages.db(request, incidents.snooze_server, account.id, endpoint_id, days)
        except ServiceError as exc:
            return _refused(service, back + "#alerts", "holds", exc.text, {"days": form.get("days", "")[:20]})
        return _back(back, "snoozed")

    @app.post("/servers/{endpoint_id}/maintenance", include_in_schema=False)
    async def server_maintenance(endpoint_id: int, request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account, form = got
        back = f"/servers/{endpoint_id}"
        typed = {k: form.get(k, "")[:40] for k in ("start", "end")} | {"weekly": form.get("weekly", "")}
        try:
            starts_at = _utc_field(form.get("start", ""), "start")
            ends_at = _utc_field(form.get("end", ""), "end")
            await pages.db(
                request,
                lambda ctx: incidents.maintenance_server(
                    ctx, account.id, endpoint_id, starts_at, ends_at, weekly=form.get("weekly") == "on"
                ),
            )
        except ServiceError as exc:
            return _refused(service, back + "#alerts", "holds", exc.text, typed)
        return _back(back, "window_added")

    @app.post("/servers/{endpoint_id}/acknowledge", include_in_schema=False)
    async def server_acknowledge(endpoint_id: int, request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account = got[0]
        return await act(
            request,
            f"/servers/{endpoint_id}",
            "acknowledged",
            incidents.acknowledge_server,
            account.id,
            endpoint_id,
        )

    @app.post("/servers/{endpoint_id}/holds/{hold_id}/remove", include_in_schema=False)
    async def server_hold_remove(endpoint_id: int, hold_id: int, request: Request) -> Response:
        got = await account_and_form(request)
        if isinstance(got, Response):
            return got
        account, form = got
        back = f"/servers/{endpoint_id}"
        if form.get("confirmed") != "yes":
            try:
                holds = await pages.db(request, incidents.server_holds, account.id, endpoint_id)
            except ServiceError:
                holds = []
            found = next((h for h in holds if h.id == hold_id), None)
            if found is None:
                return _missing(pages, request, account, "servers", "snooze or window")
            return _confirm(
                pages,
                request,
                account,
                question=f"End this {found.kind} of {found.domain}?",
                detail="Alerts held for this server go out at once if still true.",
                button="End it",
                back=back,
                page="servers",
            )
        return await act(
            request, back, "hold_removed", incidents.remove_server_hold, account.id, endpoint_id, hold_id
        )

    @app.post("/signout", include_in_schema=False)
    async def signout(request: Request) -> Response:
        if await pages.form(request) is None:
            return _forbidden()
        account_id = await run_in_threadpool(pages.signed_in, request)
        if account_id is not None:
            # Server-side: every cookie of the account stops working, not just this browser's.
            await run_in_threadpool(session.end_all, service, account_id, ip=_ip(request))
        response = RedirectResponse("/signin", status_code=303)
        session.sign_out(response)
        return response


def _utc_field(text: str, name: str) -> datetime:
    """A time typed as YYYY-MM-DD HH:MM, in UTC (the database's naive UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise errors.invalid(f"{name} must be a UTC time such as 2026-12-05 22:00") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(zoneinfo.ZoneInfo("UTC")).replace(tzinfo=None)
    return moment


def _settings_values(
    prefs: preferences.Preferences, error: str | None, form: dict[str, str] | None
) -> dict[str, Any]:
    values = {
        "notify_email": prefs.notify_email or "",
        "expiry_thresholds": ", ".join(str(d) for d in prefs.expiry_thresholds),
        "alerts_enabled": prefs.alerts_enabled,
        "weekly_enabled": prefs.weekly_enabled,
        "weekly_day": prefs.weekly_day,
        "weekly_time": prefs.weekly_time,
        "timezone": prefs.timezone,
    }
    if form is not None:  # show what was typed, next to the error
        values.update(
            {
                k: form[k]
                for k in ("notify_email", "expiry_thresholds", "weekly_time", "timezone")
                if k in form
            }
        )
    return {
        "page": "settings",
        "prefs": prefs,
        "values": values,
        "error": error,
        "error_field": _error_field(error),
        "zones": sorted(zoneinfo.available_timezones()),
    }


# Which settings field a refusal of preferences.update is about, by its words, so the form
# marks that field invalid, ties the message to it and puts the focus there.
_ERROR_FIELDS = (
    ("threshold", "expiry_thresholds"),
    ("weekly_time", "weekly_time"),
    ("weekly_day", "weekly_day"),
    ("time zone", "timezone"),
    ("timezone", "timezone"),
    ("address", "notify_email"),
    ("mail", "notify_email"),
)


def _error_field(error: str | None) -> str | None:
    if not error:
        return None
    text = error.lower()
    return next((name for word, name in _ERROR_FIELDS if word in text), None)
