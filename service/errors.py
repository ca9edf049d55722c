"""One JSON error shape for every failure, and the handlers that produce it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import ErrorBody, ErrorResponse

log = logging.getLogger("service")


class ApiError(Exception):
    """An error answered to the client as :class:`ErrorResponse` with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def unavailable(message: str, retry_after: int, code: str) -> ApiError:
    """A 503 with Retry-After."""
    return ApiError(503, code, message, headers={"Retry-After": str(retry_after)})


def error_json(
    request: Request | None, status: int, code: str, message: str, details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Render the shared error body."""
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    metrics = getattr(request.app.state, "metrics", None) if request is not None else None
    if metrics is not None:
        metrics.record_reject(code)
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details),
                         request_id=request_id)
    return JSONResponse(body.model_dump(), status_code=status, headers=dict(headers or {}))


_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "validation_error", 429: "too_many_requests",
    503: "unavailable",
}


def _text(value: object) -> str:
    """``value`` as text that encodes to UTF-8 (a client's lone surrogate as ``\\udXXX``)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def clean_validation_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Keep only JSON-safe parts of pydantic's errors (inputs may be raw bytes, locations
    may be a client's dict keys)."""
    out = []
    for err in errors:
        out.append({
            "loc": [_text(part) for part in err.get("loc", ())],
            "msg": _text(err.get("msg", "")),
            "type": _text(err.get("type", "")),
        })
    return out


#: Starlette's multipart limits (request.form()): message prefix -> (status, code, message).
_FORM_LIMITS = {
    "Too many fields": (422, "too_many_fields", "more than 1000 form fields"),
    "Too many files": (422, "too_many_fields", "more than 1000 files in the form"),
    "Part exceeded maximum size": (413, "payload_too_large", "a form field is over 1 MB "
                                   "(the limit of one text field of a multipart form)"),
    "Field exceeded maximum size": (413, "payload_too_large", "a form field is over 1 MB "
                                    "(the limit of one text field of a form)"),
}


def _framework_error(status: int, message: str) -> tuple[int, str, str]:
    """The documented status, code and message of an HTTP error the framework raised."""
    code = _HTTP_CODES.get(status, "http_error")
    if status != 400:
        return status, code, message
    for prefix, answer in _FORM_LIMITS.items():
        if message.startswith(prefix):
            return answer
    # undecodable JSON or multipart ("There was an error parsing the body", "Invalid
    # multipart data.", "Missing boundary in multipart.", ...)
    return 422, "malformed_body", ("the request body cannot be parsed (malformed JSON or "
                                   "multipart data)")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception through :func:`error_json`."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_json(request, exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = clean_validation_errors(list(exc.errors()))
        parts = [f"{'.'.join(d['loc'][1:] or d['loc'])}: {d['msg']}" for d in details[:5]]
        message = "invalid request: " + "; ".join(parts) if parts else "invalid request"
        return error_json(request, 422, "validation_error", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        default = _HTTP_CODES.get(exc.status_code, "http_error").replace("_", " ")
        status, code, message = _framework_error(
            exc.status_code, exc.detail if isinstance(exc.detail, str) else default)
        return error_json(request, status, code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_json(request, 500, "internal_error", "internal server error")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    text = {
        401: "Missing or invalid API key.", 403: "Admin endpoints disabled.",
        404: "Unknown item or route.", 413: "Upload or image too large.",
        415: "Not an image.", 422: "Invalid parameters, attribute or image.",
        503: "No index loaded yet, or overloaded (see Retry-After).",
    }
    return {s: {"model": ErrorResponse, "description": text.get(s, "Error.")} for s in statuses}
