"""Micro-batching of model forward passes, with a bounded admission queue.

Requests first take a slot (:meth:`MicroBatcher.slot`); when ``queue_max`` slots are taken
the request is shed with :class:`Overloaded` (503 + Retry-After) before any work is done.
Embedding jobs (one preprocessed image and the attributes wanted for it) go to one worker
coroutine that runs forward passes, one at a time, on a dedicated inference thread; each
image goes through the model's global trunk once for all of its attributes. While the
model is busy, new jobs pile up and the next pass takes up to ``max_size`` of them at once;
when the model is idle a job starts immediately, waiting up to ``max_wait_ms`` for company
only when other admitted requests are about to submit.

A request that is alone (:meth:`MicroBatcher.alone`) may hand over its image undecoded (a
``Deferred``): the inference thread decodes and preprocesses it right before the forward, one
thread hand-off instead of two (decode pool, then inference thread), which is what a lone
query waits for. Under load the decode pool keeps decoding beside the forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numpy as np

from .protocols import EmbedderLike

if TYPE_CHECKING:
    from model.preprocess import PreparedImage

P = ParamSpec("P")
T = TypeVar("T")
Deferred = Callable[[], "PreparedImage"]     # decodes and preprocesses an upload when called


class Overloaded(Exception):
    """Every admission slot is taken."""


class BatcherClosed(Exception):
    """The batcher was stopped while a job waited."""


@dataclass
class JobResult:
    """One job's embeddings ([attributes, dim], in the job's attribute order) and their cost."""

    vectors: np.ndarray
    queue_ms: float
    embed_ms: float
    batch_size: int
    prepare_ms: float = 0.0    # decoding a Deferred image on the inference thread


@dataclass
class _Job:
    image: PreparedImage | Deferred
    attributes: tuple[str, ...]
    embedder: EmbedderLike
    future: asyncio.Future[JobResult]
    enqueued: float = field(default_factory=time.perf_counter)


class Slot:
    """An admitted request; it may submit jobs once (one or several together)."""

    def __init__(self, batcher: MicroBatcher):
        self._batcher = batcher
        self.pending_submit = True

    def submitted(self) -> None:
        if self.pending_submit:
            self.pending_submit = False
            self._batcher._incoming -= 1


class MicroBatcher:
    """Gathers concurrent ``embed`` calls into bounded batches run off the event loop."""

    def __init__(
        self,
        executor: Executor,
        max_size: int = 16,
        max_wait_ms: float = 5.0,
        queue_max: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        self.executor = executor
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_max = queue_max
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._admitted = 0
        self._incoming = 0  # admitted, not yet submitted: worth waiting for
        self._forwarding = False

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker on the running loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="asen-batcher")

    async def stop(self) -> None:
        """Stop the worker and fail queued jobs."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(BatcherClosed("service is shutting down"))

    @property
    def depth(self) -> int:
        """Requests admitted and not finished."""
        return self._admitted

    def alone(self) -> bool:
        """One request admitted (the caller's), no job queued and the model idle: its
        image is better decoded on the inference thread (a ``Deferred``)."""
        return (self._admitted == 1 and not self._forwarding
                and self._queue is not None and self._queue.empty())

    # ------------------------------------------------------------ admission
    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Admit one request for the duration of the block, or raise :class:`Overloaded`."""
        if self._admitted >= self.queue_max:
            raise Overloaded(f"{self._admitted} queries in flight (limit {self.queue_max})")
        self._admitted += 1
        self._incoming += 1
        self._publish_depth()
        slot = Slot(self)
        try:
            yield slot
        finally:
            slot.submitted()
            self._admitted -= 1
            self._publish_depth()

    def _publish_depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self._admitted)

    # ------------------------------------------------------------ jobs
    async def embed(
        self, slot: Slot, embedder: EmbedderLike,
        items: Sequence[tuple[PreparedImage | Deferred, Sequence[str]]],
    ) -> list[JobResult]:
        """Embed ``(prepared image, attributes)`` jobs with ``embedder`` in shared forward
        passes (``embedder.embed_each_prepared``: one trunk pass per image). A ``Deferred``
        image is prepared on the inference thread; what it raises fails its job only."""
        if self._queue is None or self._worker is None:
            raise BatcherClosed("batcher is not running")
        loop = asyncio.get_running_loop()
        jobs = [_Job(img, tuple(attrs), embedder, loop.create_future())
                for img, attrs in items]
        for job in jobs:
            self._queue.put_nowait(job)
        slot.submitted()
        try:
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except BaseException:
            for job in jobs:
                job.future.cancel()
            raise

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run other model work (e.g. explain) on the inference thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, partial(fn, *args, **kwargs))

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or self._incoming <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [job for job in batch if not job.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[int, list[_Job]] = {}
            for job in batch:
                groups.setdefault(id(job.embedder), []).append(job)
            for jobs in groups.values():
                await self._forward(loop, jobs)

    async def _forward(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        embedder = jobs[0].embedder
        attrs = [list(job.attributes) for job in jobs]
        start = time.perf_counter()
        self._forwarding = True
        try:
            prepare_s, vectors = await loop.run_in_executor(
                self.executor, _prepare_and_embed, embedder, [job.image for job in jobs], attrs)
        except asyncio.CancelledError:
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(BatcherClosed("service is shutting down"))
            raise
        except Exception as exc:
            if len(jobs) > 1:  # one bad input must not fail its batch-mates: retry one by one
                for job in jobs:
                    await self._forward(loop, [job])
                return
            if not jobs[0].future.done():
                jobs[0].future.set_exception(exc)
            return
        finally:
            self._forwarding = False
        shapes_ok = len(vectors) == len(jobs) and all(
            len(v) == len(job.attributes) for v, job in zip(vectors, jobs, strict=False))
        if not shapes_ok:  # never let a misbehaving model kill the worker
            err = RuntimeError(f"model returned {len(vectors)} results for {len(jobs)} images")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        end = time.perf_counter()
        embed_ms = (end - start - prepare_s) * 1000.0
        if self._on_batch is not None:
            self._on_batch(len(jobs), embed_ms)
        for job, vec in zip(jobs, vectors, strict=True):
            if not job.future.done():
                job.future.set_result(JobResult(
                    vectors=np.asarray(vec, dtype=np.float32),
                    queue_ms=(start - job.enqueued) * 1000.0,
                    embed_ms=embed_ms,
                    batch_size=len(jobs),
                    prepare_ms=prepare_s * 1000.0,
                ))


def _prepare_and_embed(embedder: EmbedderLike, images: Sequence[PreparedImage | Deferred],
                       attributes: list[list[str]]) -> tuple[float, list[np.ndarray]]:
    """On the inference thread: prepare the Deferred images, then one forward of all; the
    seconds preparing took, and the vectors."""
    t0 = time.perf_counter()
    prepared = [image() if callable(image) else image for image in images]
    prepare_s = time.perf_counter() - t0
    return prepare_s, embedder.embed_each_prepared(prepared, attributes)
