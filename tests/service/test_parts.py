"""Unit tests of the service's parts that need no server: settings, batcher, overlay."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from service.batching import MicroBatcher, Overloaded
from service.errors import ApiError
from service.heatmap import centre_crop_region, render_overlay
from service.settings import Settings
from service.uploads import in_decode_pool, parse_filters, parse_json_object


class FakeEmbedder:
    """Records batch sizes (images); each row is [image id, len(attribute name)] padded to
    dim 4. (The batcher's own logic under test; the real model's path is tested in
    test_search_features.py.)"""

    def __init__(self, delay: float = 0.02):
        self.delay = delay
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def embed_each_prepared(self, images, attributes):
        with self.lock:
            self.batches.append(len(images))
        time.sleep(self.delay)
        return [np.array([[img, len(a), 0, 0] for a in attrs], dtype=np.float32)
                for img, attrs in zip(images, attributes, strict=True)]


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("ASEN_PORT", "9001")
    monkeypatch.setenv("ASEN_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("ASEN_API_KEY", "")
    monkeypatch.setenv("ASEN_ADMIN_API_KEY", "s3cret")
    monkeypatch.setenv("ASEN_BATCH_MAX_SIZE", "1")
    monkeypatch.setenv("ASEN_MAX_UPLOAD_BYTES", "2048")
    s = Settings()
    assert s.port == 9001 and s.host == "127.0.0.1"
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.api_key is None
    assert s.admin_api_key is not None and s.admin_api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.batching is False and s.max_upload_bytes == 2048


def test_settings_defaults(monkeypatch):
    for name in ("ASEN_PORT", "ASEN_HOST", "ASEN_MAX_UPLOAD_BYTES", "ASEN_INDEX_DIR"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.max_upload_bytes == 10 * 1024 * 1024
    assert s.batching and s.checkpoint is None


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


def test_batcher_gathers_concurrent_requests():
    async def scenario():
        emb = FakeEmbedder(delay=0.03)
        pool = ThreadPoolExecutor(1)
        batcher = MicroBatcher(pool, max_size=8, max_wait_ms=20, queue_max=64)
        batcher.start()

        async def one(i):
            async with batcher.slot() as slot:
                (res,) = await batcher.embed(slot, emb, [(i, ["a" * (i % 3 + 1)])])
                return i, res

        out = await asyncio.gather(*(one(i) for i in range(20)))
        await batcher.stop()
        pool.shutdown()
        return emb, out

    emb, out = asyncio.run(scenario())
    for i, res in out:  # every caller got its own row back
        assert res.vectors[0, 0] == i and res.vectors[0, 1] == i % 3 + 1
        assert 1 <= res.batch_size <= 8
    assert sum(emb.batches) == 20
    assert max(emb.batches) > 1, emb.batches
    assert max(emb.batches) <= 8


def test_batcher_single_request_does_not_wait():
    async def scenario():
        emb = FakeEmbedder(delay=0.0)
        pool = ThreadPoolExecutor(1)
        batcher = MicroBatcher(pool, max_size=8, max_wait_ms=500, queue_max=4)
        batcher.start()
        t = time.perf_counter()
        async with batcher.slot() as slot:
            await batcher.embed(slot, emb, [(1, ["a"])])
        elapsed = time.perf_counter() - t
        await batcher.stop()
        pool.shutdown()
        return elapsed

    assert asyncio.run(scenario()) < 0.25  # nobody else is coming: no 500 ms wait


def test_batcher_sheds_load_and_recovers():
    async def scenario():
        batcher = MicroBatcher(ThreadPoolExecutor(1), max_size=4, max_wait_ms=1, queue_max=2)
        batcher.start()
        async with batcher.slot(), batcher.slot():
            assert batcher.depth == 2
            with pytest.raises(Overloaded):
                async with batcher.slot():
                    pass
        assert batcher.depth == 0
        async with batcher.slot():
            pass
        await batcher.stop()

    asyncio.run(scenario())


def test_batcher_model_error_reaches_every_caller():
    class Broken:
        def embed_each_prepared(self, images, attributes):
            raise RuntimeError("boom")

    async def scenario():
        batcher = MicroBatcher(ThreadPoolExecutor(1), max_size=4, max_wait_ms=1, queue_max=8)
        batcher.start()

        async def one():
            async with batcher.slot() as slot:
                return await batcher.embed(slot, Broken(), [(0, ["a"])])

        results = await asyncio.gather(one(), one(), return_exceptions=True)
        # the worker survives a failing model
        async with batcher.slot() as slot:
            ok = await batcher.embed(slot, FakeEmbedder(0), [(7, ["a", "bb"])])
        await batcher.stop()
        return results, ok

    results, ok = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert ok[0].vectors[:, 0].tolist() == [7, 7] and ok[0].vectors[:, 1].tolist() == [1, 2]


def test_overlay_png_has_image_size_and_box():
    img = Image.new("RGB", (300, 200), (90, 90, 90))
    att = np.zeros((14, 14), np.float32)
    att[3:6, 4:9] = 1.0
    region = centre_crop_region(300, 200)
    assert region == (50, 0, 250, 200)
    png = render_overlay(img, att / att.sum(), region, (60, 10, 120, 70))
    out = Image.open(io.BytesIO(png))
    assert out.format == "PNG" and out.size == (300, 200)
    px = np.asarray(out.convert("RGB"))
    assert px[0, 0].tolist() == [90, 90, 90]          # outside the crop: untouched
    assert px[40, 150].tolist() != [90, 90, 90]       # inside: heat-map blended
    big = render_overlay(Image.new("RGB", (2000, 1000)), att, (500, 0, 1500, 1000), None)
    assert max(Image.open(io.BytesIO(big)).size) == 512


def test_json_field_parsing():
    assert parse_json_object(None, "filters") == {}
    assert parse_json_object(" ", "filters") == {}
    assert parse_filters('{"category": "top", "size": 38, "sale": true}') == {
        "category": "top", "size": "38", "sale": "true"}
    for bad in ("[1]", "{", '"x"'):
        with pytest.raises(ApiError) as err:
            parse_json_object(bad, "filters")
        assert err.value.status == 422
    with pytest.raises(ApiError):
        parse_filters('{"a": {"nested": 1}}')


def test_one_failing_image_does_not_fail_its_batch_mates():
    class Picky(FakeEmbedder):
        def embed_each_prepared(self, images, attributes):
            if -1 in images:
                raise ValueError("cannot embed image -1")
            return super().embed_each_prepared(images, attributes)

    async def scenario():
        emb = Picky(delay=0.01)
        batcher = MicroBatcher(ThreadPoolExecutor(1), max_size=8, max_wait_ms=50, queue_max=8)
        batcher.start()

        async def one(i):
            async with batcher.slot() as slot:
                return (await batcher.embed(slot, emb, [(i, ["a"])]))[0]

        out = await asyncio.gather(*(one(i) for i in (1, -1, 2, 3)), return_exceptions=True)
        await batcher.stop()
        return out

    out = asyncio.run(scenario())
    assert isinstance(out[1], ValueError)
    assert [out[i].vectors[0, 0] for i in (0, 2, 3)] == [1, 2, 3]
