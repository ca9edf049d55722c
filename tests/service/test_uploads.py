"""Upload handling (service/uploads.py): the decode pool's limit; JSON form fields
(service/schemas.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from pydantic import TypeAdapter, ValidationError

from service.schemas import FormFilters
from service.settings import Settings
from service.uploads import in_decode_pool


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_decode_pool_runs_at_most_its_limit_at_once(limit):
    running, peak, lock = 0, 0, threading.Lock()

    def decode(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return i

    async def scenario():
        settings = Settings(decode_concurrency=limit)
        return await asyncio.gather(*(in_decode_pool(settings, decode, i) for i in range(12)))

    assert asyncio.run(scenario()) == list(range(12))   # every call ran, results in order
    assert peak == limit


def test_json_field_parsing():
    filters = TypeAdapter(FormFilters)
    assert filters.validate_python(None) is None    # blank: no filters
    assert filters.validate_python(" ") is None
    assert filters.validate_python('{"category": "top", "size": 38, "sale": true}') == {
        "category": "top", "size": "38", "sale": "true"}
    assert filters.validate_python('{"category": ["top", "dress"], "size": [38]}') == {
        "category": ["top", "dress"], "size": ["38"]}          # a list: any of
    for bad in ("[1]", "{", '"x"', '{"a": {"nested": 1}}', '{"a": []}'):
        with pytest.raises(ValidationError):
            filters.validate_python(bad)
