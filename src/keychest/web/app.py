"""The HTTP application: health now; REST API, dashboard and metrics are mounted here."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from keychest import __version__
from keychest.service.facade import Keychest


def create_app(service: Keychest) -> FastAPI:
    app = FastAPI(title="keychest", version=__version__)
    app.state.service = service

    @app.get("/healthz", response_class=PlainTextResponse, include_in_schema=False)
    def healthz() -> str:
        service.read(lambda ctx: ctx.session.execute(_select_one()))
        return "ok\n"

    return app


def _select_one():  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    return text("SELECT 1")
