"""One closed table of error kinds: each maps to one HTTP status, and every error response has the
body ``{"error": {"type": KIND, "message": ...}}``. Messages never carry ad text."""

from __future__ import annotations

import logging
from enum import Enum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ErrorKind(str, Enum):
    """Every error the API can answer with (the ``type`` field of the error body)."""

    invalid_json = "invalid_json"
    invalid_encoding = "invalid_encoding"
    validation_error = "validation_error"
    payload_too_large = "payload_too_large"
    unsupported_media_type = "unsupported_media_type"
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    conflict = "conflict"
    overloaded = "overloaded"
    not_ready = "not_ready"
    internal_error = "internal_error"


STATUS: dict[ErrorKind, int] = {
    ErrorKind.invalid_json: 400,
    ErrorKind.invalid_encoding: 400,
    ErrorKind.validation_error: 422,
    ErrorKind.payload_too_large: 413,
    ErrorKind.unsupported_media_type: 415,
    ErrorKind.unauthorized: 401,
    ErrorKind.forbidden: 403,
    ErrorKind.not_found: 404,
    ErrorKind.method_not_allowed: 405,
    ErrorKind.conflict: 409,
    ErrorKind.overloaded: 503,
    ErrorKind.not_ready: 503,
    ErrorKind.internal_error: 500,
}

_HTTP_STATUS_KIND = {
    401: ErrorKind.unauthorized,
    403: ErrorKind.forbidden,
    404: ErrorKind.not_found,
    405: ErrorKind.method_not_allowed,
    413: ErrorKind.payload_too_large,
    415: ErrorKind.unsupported_media_type,
    422: ErrorKind.validation_error,
}


class APIError(Exception):
    """An error answered as ``STATUS[kind]`` with ``message`` (which must not contain ad text)."""

    def __init__(self, kind: ErrorKind, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.headers = headers or {}


def error_response(kind: ErrorKind, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON response for an error of ``kind``."""
    return JSONResponse(
        {"error": {"type": kind.value, "message": message}}, status_code=STATUS[kind], headers=headers
    )


def describe_loc(loc: tuple) -> str:
    """``("body", "input", 1)`` -> ``input[1]`` (locations only; values are never shown)."""
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "header"):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.kind, exc.message, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default body echoes the offending input; ours names the location and the rule only.
    errs = exc.errors()
    first = errs[0] if errs else {}
    msg = (
        f"{describe_loc(tuple(first.get('loc', ())))}: {first.get('msg', 'invalid')}"
        if first
        else "invalid request"
    )
    return error_response(ErrorKind.validation_error, msg)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = _HTTP_STATUS_KIND.get(exc.status_code)
    if kind is None:
        kind = ErrorKind.internal_error if exc.status_code >= 500 else ErrorKind.validation_error
        return JSONResponse(
            {"error": {"type": kind.value, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
    return error_response(kind, str(exc.detail), getattr(exc, "headers", None))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    # The exception text may quote input, so only its type is logged.
    logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return error_response(ErrorKind.internal_error, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception through the table above."""
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]  # Starlette types handlers loosely
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unhandled)
