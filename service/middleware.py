"""ASGI middleware: request ids, request metrics, the request body size limit and the
security headers of HTML pages."""

from __future__ import annotations

import json
import re
import time
import uuid

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

#: Room for the non-file form fields and multipart framing on top of the upload limit.
FORM_OVERHEAD_BYTES = 64 * 1024
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Sent with every HTML response (the web page, /docs, any other): only this origin's
#: scripts, styles and data, and no framing by other sites (clickjacking).
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def _with_page_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` plus :data:`PAGE_HEADERS` (those not set already) for an HTML body."""
    names = {k.lower() for k, _ in headers}
    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    if not content_type.lower().startswith(b"text/html"):
        return headers
    return [*headers, *((k.encode(), v.encode()) for k, v in PAGE_HEADERS.items()
                        if k.encode() not in names)]


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path_format", None)   # "/v1/items/{item_id}", no convertor
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    """Give every request an id, cap its body, and record its metrics (status, latency and
    the stage timings a route left in ``request.state.stages``) when it is answered."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes + FORM_OVERHEAD_BYTES
        self.max_upload = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*_with_page_headers(list(message.get("headers", []))),
                                      (b"x-request-id", request_id.encode("latin-1")),
                                      (b"x-content-type-options", b"nosniff")]
            await send(message)

        try:
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await self._too_large(send_wrapper, request_id)
                return
            await self.app(scope, self._limited(receive), send_wrapper)
        finally:
            self.metrics.record_request(scope.get("method", ""), _route_template(scope),
                                        status["code"], time.perf_counter() - started,
                                        scope["state"].get("stages"))

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise HTTPException(413, self._message())
            return message

        return wrapped

    def _message(self) -> str:
        return f"upload too large: the limit is {self.max_upload} bytes (ASEN_MAX_UPLOAD_BYTES)"

    async def _too_large(self, send: Send, request_id: str) -> None:
        self.metrics.record_reject("payload_too_large")
        body = json.dumps({
            "error": {"code": "payload_too_large", "message": self._message(),
                      "details": {"limit_bytes": self.max_upload}},
            "request_id": request_id,
        }).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})
