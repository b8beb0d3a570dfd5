"""The REST API v1.0: answer shapes (``models``), the body limit (``limits``), request reading
(``inputs``) and the routes (``routes``). :func:`install` puts them on the app."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keychest.service.facade import Keychest
from keychest.web.rest.limits import MAX_BODY, BodyLimit, HeadAsGet, RateHeaders
from keychest.web.rest.models import error_response
from keychest.web.rest.routes import PREFIX, build_router, docs_url

__all__ = ["MAX_BODY", "PREFIX", "BodyLimit", "build_router", "install"]


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _delegate(handler: Callable[[Request, Any], Any], request: Request, exc: Exception) -> Any:
    answer = handler(request, exc)
    return await answer if inspect.isawaitable(answer) else answer


def install(app: FastAPI, service: Keychest) -> None:
    app.include_router(build_router(service))
    app.add_middleware(RateHeaders)
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.add_middleware(HeadAsGet, effectful=(PREFIX + "/access/claim",))

    # FastAPI's own errors (a missing path part, a 404 route, a wrong method) in the same
    # JSON shape as ours under /api/; other paths keep whatever handler was installed before
    # (the app's own pages), else FastAPI's defaults.
    other_validation = app.exception_handlers.get(
        RequestValidationError, request_validation_exception_handler
    )
    other_http = app.exception_handlers.get(StarletteHTTPException, http_exception_handler)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        if not _is_api(request):
            return await _delegate(other_validation, request, exc)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        text = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid input"))
        return error_response(422, "invalid", text)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if not _is_api(request):
            return await _delegate(other_http, request, exc)
        words = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        word = words.get(exc.status_code, "error")
        if exc.status_code in (404, 405):
            # KeyChest pointed a lost client at its documentation.
            text = "endpoint not found" if exc.status_code == 404 else str(exc.detail)
            body = {"status": word, "error": text, "html_docs": docs_url(request)}
            response = JSONResponse(body, status_code=exc.status_code)
        else:
            response = error_response(exc.status_code, word, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response
