"""Error answers: every error is ``{"error": code, "detail": one line, "problems"?: [...]}``.

:func:`error_body` is the one place that shape is built, for the exception handlers below and for
the ASGI middlewares that answer before the app runs (:mod:`src.serving.limits`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    431: "headers_too_large",
    503: "not_ready",
}


# FastAPI's answer to a JSON body it cannot decode (not UTF-8, ...), and what the API says instead.
FASTAPI_BODY_ERROR = "There was an error parsing the body"
UNREADABLE_BODY = (
    "The body cannot be decoded as JSON text; send a UTF-8 JSON object with "
    "Content-Type: application/json."
)


def error_body(
    error: str, detail: str, problems: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The JSON body of every error answer."""
    body: dict[str, Any] = {"error": error, "detail": detail}
    if problems is not None:
        body["problems"] = problems
    return body


def error_bytes(error: str, detail: str) -> bytes:
    return json.dumps(error_body(error, detail)).encode()


def error_response(
    status: int,
    error: str,
    detail: str,
    problems: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(error, detail, problems), status_code=status, headers=headers)


class ApiError(HTTPException):
    """An HTTP error with a machine-readable code; rendered by :func:`error_body`."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str,
        problems: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.error = error
        self.problems = problems


class TransportError(HTTPException):
    """A transport limit tripped while the body streamed in (413, 408, 400): answered with
    ``Connection: close`` because the rest of the body is never read. An ``HTTPException`` so
    that FastAPI, reading a JSON body, passes it on instead of answering its own 400."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(status_code=status, detail=detail)
        self.status = status
        self.error = error
        self.detail = detail


def install_error_handlers(app: FastAPI, logger: logging.Logger) -> None:
    """JSON for every error, never a 500 for a client's mistake, no traceback to the client."""

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        error = getattr(exc, "error", None) or ERROR_CODES.get(exc.status_code, "error")
        detail = str(exc.detail)
        if exc.status_code == 400 and detail == FASTAPI_BODY_ERROR:
            detail = UNREADABLE_BODY
        return error_response(
            exc.status_code,
            error,
            detail,
            getattr(exc, "problems", None),
            dict(exc.headers) if exc.headers else None,
        )

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            {"loc": [str(part) for part in err.get("loc", ())], "detail": str(err.get("msg"))}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(p['loc'])}: {p['detail']}" for p in problems)
        return error_response(422, "invalid_request", f"Invalid request: {summary}", problems)

    async def transport_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TransportError)
        request.state.error = exc.error
        return error_response(exc.status, exc.error, exc.detail, headers={"connection": "close"})

    async def client_gone(_request: Request, _exc: Exception) -> JSONResponse:
        return error_response(400, "client_disconnected", "The client closed the connection.")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"path": request.url.path, "error": type(exc).__name__}},
        )
        return error_response(
            500, "internal_error", "Internal server error; it has been logged. Please retry."
        )

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(TransportError, transport_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)
