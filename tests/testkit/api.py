"""Checks of the HTTP API's answers (docs/API.md) and its upload fields, for any client
with httpx's response interface (``httpx.Client``, ``fastapi.testclient.TestClient``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.filters import DEFAULT_MIN_CONFIDENCE


def ok(response: Any) -> Any:
    """The JSON body of a 200 answer (fails with the body otherwise)."""
    assert response.status_code == 200, response.text
    return response.json()


def error_of(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The ``error`` of an answer in the shared error shape (docs/API.md, "Errors"), after
    checking its status, that shape, the request id and, when given, its ``code``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["message"], body
    assert body["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def image_file(image: bytes | Path, name: str = "q.jpg",
               mime: str = "image/jpeg") -> dict[str, tuple[str, bytes, str]]:
    """``files=`` of a request with one upload in the ``image`` field."""
    data = image if isinstance(image, bytes) else image.read_bytes()
    return {"image": (name, data, mime)}


def tagged_with(item: Any, targets: dict[str, str],
                min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> bool:
    """Whether an indexed item (``indexer.items.Item``) is a "but with" candidate of
    ``targets`` (attribute -> value): its tag of each is that value, as a catalog label or a
    prediction of at least ``min_confidence`` (the service's default)."""
    return all(a in item.tags and item.tags[a].value == v
               and (item.tags[a].source == "label" or item.tags[a].confidence >= min_confidence)
               for a, v in targets.items())
