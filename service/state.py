"""The model + index the service answers from, and their hot reload.

A :class:`Snapshot` pins one index version (the resolved versioned folder behind
``ASEN_INDEX_DIR``) together with the embedder that built it. Requests take a lease on the
current snapshot; a reload opens the new index completely, then swaps the reference. The old
snapshot is closed when its last lease ends, so in-flight requests finish on what they started
with. Every call into a snapshot's index (searches, item reads, journal reads and writes)
runs on that snapshot's own small thread pool (:meth:`Snapshot.call`), so a slow reload
never delays the queries served from the old one and no index call blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

from PIL import Image

from indexer.manifest import AttributeEntry, Manifest

from .batching import MicroBatcher
from .errors import ApiError, unavailable
from .metrics import Metrics
from .protocols import CatalogIndexLike, EmbedderLike
from .schemas import EmbedderInfo, ReloadResponse
from .settings import Settings
from .values import CheckpointValues, ValueSpace, load_value_space

log = logging.getLogger("service")

P = ParamSpec("P")
T = TypeVar("T")

#: Threads per snapshot for index calls (CatalogIndex is thread-safe; FAISS releases the GIL).
INDEX_THREADS = 2


class NotLoadable(Exception):
    """The index folder or its checkpoint cannot be served (message says why)."""


def open_catalog_index(path: Path) -> CatalogIndexLike:
    """Default index opener: :class:`indexer.reader.CatalogIndex`."""
    from indexer.reader import CatalogIndex

    return CatalogIndex.open(path)


def _single_threaded_faiss() -> None:
    """Index threads search one query batch each, without an OpenMP team of FAISS's: idle
    team threads would spin on the cores the model's thread needs (docs/BENCHMARKS.md)."""
    import faiss

    faiss.omp_set_num_threads(1)


def load_embedder(path: Path, settings: Settings) -> EmbedderLike:
    """Default model loader: :func:`model.load_model`."""
    from model import load_model

    return load_model(path, device=settings.device, precision=settings.precision)


def read_manifest(index_dir: Path) -> Manifest:
    """The manifest of an INDEX_DIR (raises NotLoadable)."""
    try:
        return Manifest.read(index_dir)
    except FileNotFoundError as exc:
        raise NotLoadable(f"no index at {index_dir} (missing manifest.json)") from exc
    except (OSError, ValueError) as exc:
        raise NotLoadable(f"unreadable manifest in {index_dir}: {exc}") from exc


@dataclass
class Snapshot:
    """One servable (index, embedder) pair. Use it only inside :meth:`ServiceState.lease`."""

    index: CatalogIndexLike
    embedder: EmbedderLike
    path: Path
    version: str
    manifest: Manifest
    model: EmbedderInfo
    executor: ThreadPoolExecutor
    attributes: list[str] = field(default_factory=list)   # the index's, read once at load
    values: ValueSpace | None = None   # value prototypes + calibration, read once at load
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    refs: int = 0
    retired: bool = False
    closed: bool = False

    def attribute_entry(self, name: str) -> AttributeEntry | None:
        try:
            return self.manifest.attribute(name)
        except KeyError:
            return None

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on this snapshot's index threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(fn, *args, **kwargs))

    def _close_now(self) -> None:
        try:
            self.index.close()
        except Exception:  # closing must never take the service down
            log.exception("closing index %s failed", self.version)

    def close(self) -> None:
        """Close the index on its own thread and let the thread end."""
        if self.closed:
            return
        self.closed = True
        self.executor.submit(self._close_now)
        self.executor.shutdown(wait=False)


@dataclass(frozen=True)
class _Opened:
    """An index opened on its pool, with what the loader reads of it there."""

    index: CatalogIndexLike
    attributes: list[str]
    sizes: dict[str, int]
    values: ValueSpace | None


def _open_on_pool(open_index: Callable[[Path], CatalogIndexLike], folder: Path,
                  checkpoint: Path, fallback: CheckpointValues) -> _Opened:
    index = open_index(folder)
    try:
        attributes = list(index.attributes)
        return _Opened(index, attributes, {a: int(index.size(a)) for a in attributes},
                       load_value_space(index, attributes, checkpoint, fallback))
    except BaseException:
        index.close()
        raise


def _embedder_info(embedder: EmbedderLike, checkpoint: Path) -> EmbedderInfo:
    sha = embedder.checkpoint_sha256
    return EmbedderInfo(
        version=sha[:12] if sha else checkpoint.stem,
        checkpoint=checkpoint.name,
        config=embedder.config.name,
        dim=int(embedder.dim),
        precision=embedder.precision_choice.chosen,   # ASEN_PRECISION=auto resolved
        device=str(embedder.device),
    )


class ServiceState:
    """Holds the current snapshot, the micro-batcher and the reload machinery."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        open_index: Callable[[Path], CatalogIndexLike] = open_catalog_index,
        load_model: Callable[[Path, Settings], EmbedderLike] = load_embedder,
    ):
        self.settings = settings
        self.metrics = metrics
        self._open_index = open_index
        self._load_model = load_model
        self._snapshot: Snapshot | None = None
        self._embedder: tuple[tuple[str, int, int], EmbedderLike] | None = None  # (key, model)
        self._checkpoint_values = CheckpointValues()   # each checkpoint's prototypes, once
        self._reload_lock: asyncio.Lock | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._failed_version: str | None = None
        self.last_error: str | None = None
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="asen-infer")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="asen-loader")
        self.batcher = MicroBatcher(
            self._inference,
            max_size=settings.batch_max_size,
            max_wait_ms=settings.batch_max_wait_ms,
            queue_max=settings.queue_max,
            on_batch=self._on_batch,
            on_depth=metrics.set_queue_depth,
        )

    def _on_batch(self, size: int, embed_ms: float) -> None:
        self.metrics.record_forward(size, embed_ms)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the batcher and, in the background, the first load and the watcher."""
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        self._reload_lock = asyncio.Lock()
        self.batcher.start()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch(), name="asen-watch")

    async def stop(self) -> None:
        """Stop background work and close the served index."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self.batcher.stop()
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None
        self._inference.shutdown(wait=False)
        self._loader.shutdown(wait=False)

    async def _watch(self) -> None:
        """Load at startup, then poll the manifest's index_version."""
        interval = self.settings.reload_interval_s
        while True:
            try:
                await self.reload()
            except Exception:  # keep watching whatever happens
                log.exception("index watcher failed")
            if interval <= 0:
                return
            await asyncio.sleep(interval)

    # ------------------------------------------------------------ access
    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Snapshot]:
        """The current snapshot, kept open until the block ends; 503 when none is loaded."""
        async with self.current() as snap:
            if snap is None:
                reason = self.last_error or "the index is still loading"
                raise unavailable(
                    f"no index loaded: {reason}", self.settings.retry_after_s, code="not_ready"
                )
            yield snap

    @contextlib.asynccontextmanager
    async def current(self) -> AsyncIterator[Snapshot | None]:
        """The current snapshot (None when none is loaded), kept open until the block ends."""
        snap = self._snapshot
        if snap is None:
            yield None
            return
        snap.refs += 1
        try:
            yield snap
        finally:
            snap.refs -= 1
            if snap.retired and snap.refs == 0:
                snap.close()

    # ------------------------------------------------------------ reload
    def _current_manifest_version(self) -> str | None:
        try:
            return read_manifest(self.settings.index_dir).index_version
        except NotLoadable:
            return None

    def _not_now(self, version: str | None, previous: str | None, force: bool) -> str | None:
        """Why the version now in ASEN_INDEX_DIR is not loaded (None: load it)."""
        if version is not None and version == previous:
            return "already serving it"
        if not force and version is not None and version == self._failed_version:
            return f"index {version} failed to load: {self.last_error}"
        if version is None and previous is not None:
            return f"no index in {self.settings.index_dir}; still serving the previous one"
        return None

    async def reload(self, force: bool = False) -> ReloadResponse:
        """Serve the index now in ``ASEN_INDEX_DIR`` if its version differs from the current."""
        assert self._reload_lock is not None, "start() first"
        loop = asyncio.get_running_loop()
        async with self._reload_lock:
            previous = self._snapshot.version if self._snapshot else None
            version = await loop.run_in_executor(self._loader, self._current_manifest_version)
            skip = self._not_now(version, previous, force)
            if skip is not None:
                return ReloadResponse(reloaded=False, index_version=previous,
                                      previous_version=previous, message=skip)
            started = time.perf_counter()
            try:
                snap, sizes = await loop.run_in_executor(self._loader, self._build_snapshot)
            except Exception as exc:  # anything: keep serving the old snapshot
                message = self._load_failed(exc, version)
                return ReloadResponse(reloaded=False, index_version=previous,
                                      previous_version=previous, message=message)
            self._serve(snap, sizes)
            log.info("serving index %s (model %s) from %s, loaded in %.2fs", snap.version,
                     snap.model.version, snap.path, time.perf_counter() - started)
            return ReloadResponse(reloaded=True, index_version=snap.version,
                                  previous_version=previous,
                                  message=f"now serving index {snap.version}")

    def _load_failed(self, exc: Exception, version: str | None) -> str:
        """Log and count a failed load (once per distinct reason); the message."""
        message = str(exc)
        if not isinstance(exc, NotLoadable):
            message = f"{type(exc).__name__}: {exc}"
            log.exception("loading index %s failed", version)
        elif message != self.last_error:
            log.warning("index not loaded: %s", message)
        if version is not None or message != self.last_error:
            self.metrics.record_reload(success=False)
        self.last_error = message
        self._failed_version = version
        return message

    def _serve(self, snap: Snapshot, sizes: dict[str, int]) -> None:
        """Swap ``snap`` in; the old snapshot closes when its last lease ends."""
        old, self._snapshot = self._snapshot, snap
        self.last_error = None
        self._failed_version = None
        self.metrics.record_reload(success=True)
        self.metrics.set_index(sizes, snap.version, snap.model.version)
        choice = snap.embedder.precision_choice
        self.metrics.set_precision(choice.requested, choice.chosen)
        if old is not None:
            old.retired = True
            if old.refs == 0:
                old.close()

    def _checkpoint_path(self, manifest: Manifest, folder: Path) -> Path:
        if self.settings.checkpoint is not None:
            path = Path(self.settings.checkpoint)
        else:
            raw = manifest.model.checkpoint
            if not raw:
                raise NotLoadable("the manifest names no model.checkpoint; set ASEN_CHECKPOINT")
            path = Path(raw)
            if not path.is_absolute() and not path.exists() and (folder / path).exists():
                path = folder / path
        if not path.is_file():
            raise NotLoadable(f"checkpoint {path} not found (set ASEN_CHECKPOINT)")
        return path.resolve()

    def _get_embedder(self, path: Path) -> EmbedderLike:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if self._embedder is not None and self._embedder[0] == key:
            return self._embedder[1]
        # Loaded and warmed on the inference thread, the one thread that runs the model: each
        # thread that runs torch operations gets an OpenMP team of its own, and a second team
        # (here: the loader's) made every later forward about 2x slower on two cores.
        embedder = self._inference.submit(self._load_and_warm, path).result()
        self._embedder = (key, embedder)
        return embedder

    def _load_and_warm(self, path: Path) -> EmbedderLike:
        embedder = self._load_model(path, self.settings)
        names = list(embedder.attribute_names)
        if names:  # warm up: the first real query should not pay for lazy initialisation
            warm = embedder.preprocess(Image.new("RGB", (96, 128), (128, 128, 128)))
            embedder.embed_each_prepared([warm], [names[:1]])
        return embedder

    def _build_snapshot(self) -> tuple[Snapshot, dict[str, int]]:
        """Open the index behind ASEN_INDEX_DIR and its model (loader thread); the snapshot
        and its attributes' index sizes."""
        index_dir = self.settings.index_dir
        if not index_dir.exists():
            raise NotLoadable(f"no index at {index_dir} yet")
        folder = index_dir.resolve()  # pin the versioned folder behind the symlink
        manifest = read_manifest(folder)
        ckpt = self._checkpoint_path(manifest, folder)
        embedder = self._get_embedder(ckpt)
        executor = ThreadPoolExecutor(INDEX_THREADS, thread_name_prefix="asen-index",
                                      initializer=_single_threaded_faiss)
        try:
            opened = executor.submit(_open_on_pool, self._open_index, folder, ckpt,
                                     self._checkpoint_values).result()
        except (FileNotFoundError, ValueError, OSError) as exc:
            executor.shutdown(wait=False)
            raise NotLoadable(f"invalid index at {folder}: {exc}") from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        try:
            _validate(opened.attributes, embedder, manifest, ckpt)
        except NotLoadable:
            executor.submit(opened.index.close)
            executor.shutdown(wait=False)
            raise
        snap = Snapshot(index=opened.index, embedder=embedder, path=folder,
                        version=manifest.index_version, manifest=manifest,
                        model=_embedder_info(embedder, ckpt),
                        executor=executor, attributes=opened.attributes, values=opened.values)
        return snap, opened.sizes


def _validate(attributes: list[str], embedder: EmbedderLike, manifest: Manifest,
              ckpt: Path) -> None:
    """NotLoadable unless the model has the index's attributes, dimension and checkpoint."""
    model = manifest.model
    missing = [a for a in attributes if a not in embedder.attribute_names]
    if missing:
        raise NotLoadable(
            f"checkpoint {ckpt.name} lacks the index's attributes {', '.join(missing)}"
        )
    dim = model.dim
    if int(dim) != int(embedder.dim):
        raise NotLoadable(f"index dimension {dim} != checkpoint {ckpt.name} dimension "
                          f"{embedder.dim}")
    want, have = model.sha256, embedder.checkpoint_sha256
    if want and have and want != have:
        raise NotLoadable(f"checkpoint {ckpt.name} (sha256 {have[:12]}) is not the one that "
                          f"built index (sha256 {want[:12]})")


def require_attribute(snap: Snapshot, name: str) -> str:
    """The attribute if this index has it, else a 422 listing the valid ones."""
    valid = snap.attributes
    if name not in valid:
        raise ApiError(422, "unknown_attribute",
                       f"unknown attribute {name!r}; valid attributes: {', '.join(valid)}",
                       details={"attribute": name, "valid": valid})
    return name
