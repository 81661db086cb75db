"""Framework errors (FastAPI routes, 404/405, unexpected exceptions) rendered in the same envelope as ours."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmserve.protocol.errors import ServingError

log = logging.getLogger("llmserve.gateway")


def to_response(error: ServingError, path: str) -> Response:
    return Response(error.render(path), status_code=error.status, media_type="application/json", headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> Response:
        return to_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc)
        message = f"Invalid value for '{where}': {first['msg']}." if where else f"{first['msg']}."
        return to_response(ServingError.bad_request(message, param=loc[0] if loc else None), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            message = str(exc.detail)
        error = ServingError(exc.status_code, message, headers=dict(exc.headers or {}))
        return to_response(error, request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return to_response(ServingError(500, "Internal error in the gateway."), request.url.path)
