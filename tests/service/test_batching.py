"""The micro-batcher (service/batching.py) over a recording embedder: concurrent requests
gathered into batches, no wait for a lone request, load shed and recovered, model errors."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import MicroBatcher, Overloaded


class RecordingEmbedder:
    """Records batch sizes (images); each row is [image id, len(attribute name)] padded to
    dim 4. (The batcher's own logic under test; the real model's path is tested in
    test_trunk_sharing.py.)"""

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


def test_batcher_gathers_concurrent_requests():
    async def scenario():
        emb = RecordingEmbedder(delay=0.03)
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
        emb = RecordingEmbedder(delay=0.0)
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
            ok = await batcher.embed(slot, RecordingEmbedder(0), [(7, ["a", "bb"])])
        await batcher.stop()
        return results, ok

    results, ok = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert ok[0].vectors[:, 0].tolist() == [7, 7] and ok[0].vectors[:, 1].tolist() == [1, 2]


def test_one_failing_image_does_not_fail_its_batch_mates():
    class Picky(RecordingEmbedder):
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


def test_a_lone_request_is_prepared_on_the_inference_thread():
    """alone() holds for one admitted request with the model idle; its Deferred image runs on
    the inference thread, and one that raises fails its own job only, not its batch-mates."""
    async def scenario():
        emb = RecordingEmbedder(delay=0.01)
        pool = ThreadPoolExecutor(1, thread_name_prefix="inference")
        batcher = MicroBatcher(pool, max_size=8, max_wait_ms=20, queue_max=8)
        batcher.start()
        threads: list[str] = []

        def deferred(i):
            def prepare():
                threads.append(threading.current_thread().name)
                if i < 0:
                    raise ValueError("corrupt upload")
                return i
            return prepare

        async with batcher.slot() as slot:
            lone = batcher.alone()
            (res,) = await batcher.embed(slot, emb, [(deferred(7), ["ab"])])
            async with batcher.slot():
                crowded = batcher.alone()

        async def one(i):
            async with batcher.slot() as s:
                return (await batcher.embed(s, emb, [(deferred(i), ["a"])]))[0]

        mixed = await asyncio.gather(one(1), one(-1), one(2), return_exceptions=True)
        await batcher.stop()
        pool.shutdown()
        return lone, crowded, res, threads, mixed

    lone, crowded, res, threads, mixed = asyncio.run(scenario())
    assert lone and not crowded
    assert res.vectors[0, 0] == 7 and res.prepare_ms > 0
    assert threads and all(t.startswith("inference") for t in threads)
    assert mixed[0].vectors[0, 0] == 1 and mixed[2].vectors[0, 0] == 2
    assert isinstance(mixed[1], ValueError)
