"""The HTTP application: health, plus each feature's routes installed from its own module.

Each feature module (``web.rest``, ``web.mailflow``, ``web.dashboard``, ``web.metrics``)
exposes ``install(app, service)``; all are imported here, so a broken one stops the start.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from keychest import __version__
from keychest.service.facade import Keychest
from keychest.service.metrics import database_ok
from keychest.web import ack, dashboard, mailflow, metrics, rest

FEATURES = (metrics, rest, mailflow, dashboard, ack)

HERE = Path(__file__).parent
# Swagger UI 5 (it renders OpenAPI 3.1, which FastAPI writes) and ReDoc, shipped as files in
# the fastapi-offline wheel: /docs must work on an intranet that cannot reach a CDN.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/docs-assets"
# The docs pages are FastAPI's own HTML, with inline script and style; nothing may come
# from another host.
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}
NOT_FOUND_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
}
_PAGES = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape())


def create_app(service: Keychest) -> FastAPI:
    app = FastAPI(
        title="keychest",
        version=__version__,
        description="TLS certificate monitoring: REST API v1.0",
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    _install_pages(app)

    @app.get("/healthz", response_class=PlainTextResponse, include_in_schema=False)
    def healthz() -> str:
        service.read(database_ok)
        return "ok\n"

    for feature in FEATURES:
        feature.install(app, service)
    return app


def _install_pages(app: FastAPI) -> None:
    """The API docs from local files, the favicon, and an HTML page for unknown paths."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(DOCS_ASSETS)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title="keychest REST API",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}/favicon.ico",
            # The default validator badge is an image from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers.update(DOCS_HEADERS)
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title="keychest REST API",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}/favicon.ico",
            with_google_fonts=False,
        )
        page.headers.update(DOCS_HEADERS)
        return page

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(
            HERE / "static" / "favicon.ico",
            media_type="image/x-icon",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def not_found_page(request: Request, exc: StarletteHTTPException) -> Response:
        # API clients read JSON errors; a person who mistyped a dashboard address gets a page.
        path = request.url.path
        if exc.status_code != 404 or path == "/api" or path.startswith("/api/"):
            return await http_exception_handler(request, exc)
        html = _PAGES.get_template("dashboard/not_found.html").render(path=path)
        return HTMLResponse(html, status_code=404, headers=NOT_FOUND_HEADERS)
