"""One error shape for every failure: `{"error": {"code": ..., "message": ...}}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("clipforge.service")
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody is left to answer, and it is not our fault


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    """A client (4xx) or availability (503) error with a machine-readable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# responses documented on the routes, so the OpenAPI schema tells clients what errors look like
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed input (invalid JSON, base64 or image)",
        401: "Missing or wrong API key",
        403: "Writes are disabled (no API key configured)",
        404: "Unknown id, label set, or no index configured",
        413: "Upload, image or request over the size limits",
        415: "Unsupported content type",
        422: "Input failed validation (limits, labels, k out of range, ...)",
        503: "Model or index not loaded, or the index unusable (a file of it unreadable)",
    }
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("body",)) or "request"


def validation_message(errors: list[Any]) -> str:
    parts = [f"{_location(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exn: APIError) -> JSONResponse:
        return error_response(exn.status, exn.code, exn.message, exn.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exn: RequestValidationError) -> JSONResponse:
        errors = list(exn.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "request body is not valid JSON")
        return error_response(422, "validation_error", validation_message(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exn: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exn.status_code, "http_error")
        message = exn.detail if isinstance(exn.detail, str) else str(exn.detail)
        return error_response(exn.status_code, code, message, getattr(exn, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exn: Exception) -> JSONResponse:
        # never leak internals to the client; the traceback goes to the log
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")
