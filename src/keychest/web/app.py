"""The HTTP application: health, plus each feature's routes installed from its own module.

Each feature module (``web.rest``, ``web.mailflow``, ``web.dashboard``, ``web.metrics``)
exposes ``install(app, service)``; a checkout without one simply lacks those routes.
"""

from __future__ import annotations

import importlib

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from keychest import __version__
from keychest.service.facade import Keychest

FEATURES = ("keychest.web.metrics", "keychest.web.rest", "keychest.web.mailflow", "keychest.web.dashboard")


def optional_module(name: str):  # type: ignore[no-untyped-def]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None


def create_app(service: Keychest) -> FastAPI:
    app = FastAPI(
        title="keychest", version=__version__, description="TLS certificate monitoring: REST API v1.0"
    )
    app.state.service = service

    @app.get("/healthz", response_class=PlainTextResponse, include_in_schema=False)
    def healthz() -> str:
        service.read(lambda ctx: ctx.session.execute(text("SELECT 1")))
        return "ok\n"

    for name in FEATURES:
        module = optional_module(name)
        if module is not None:
            module.install(app, service)
    return app
