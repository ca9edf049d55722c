"""Embed catalog images for every attribute: parallel decoding, batched shared-trunk passes.

Worker processes read each file once, hash its bytes (the content sha256 that drives resume
and `--update`), decode it safely and run the embedder's preprocessing. The main process
runs `Embedder.embed_all_prepared` (each global trunk once for all attributes) on the
batches and commits embeddings to the Parquet :class:`EmbeddingStore` every `part_size`
images. An id already stored with the same image hash is not embedded again (resume), nor
is an image whose hash is stored under another id (its vectors are copied).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from indexer.catalog import CatalogItem
from indexer.embed.store import EmbeddingStore, Reject
from model.embedder import Embedder
from model.errors import ImageError
from model.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, open_image, read_image_file
from model.osutil import available_cpus
from model.preprocess import PreparedImage, Preprocessor

__all__ = ["DEFAULT_MAX_BYTES", "Collector", "EmbedLimits", "EmbedOutcome", "ItemLoader",
           "Loaded", "available_cpus", "default_workers", "embed_batch", "embed_catalog",
           "item_loader", "set_threads"]

CRASH_ENV = "ASEN_INDEXER_CRASH_AFTER_SHARDS"  # test seam: SIGKILL self after k parts


class Loaded(NamedTuple):
    """One catalog image after the decoding step."""

    pos: int
    sha: str | None
    status: str                          # "new" | "unchanged" | "stored" | "cached" | "rejected"
    prepared: PreparedImage | None = None  # the model's input ("new")
    reason: str = ""                     # why ("rejected")
    detail: str = ""


@dataclass
class EmbedLimits:
    """Per-file safety limits."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass
class EmbedOutcome:
    """Per-item result of an embedding run, in catalog order."""

    shas: list[str | None]
    status: list[str]
    rejects: list[Reject] = field(default_factory=list)
    seconds: float = 0.0
    model_threads: list[int] = field(default_factory=list)   # torch threads of each model
    decode_workers: int = 0             # processes (local) or concurrent tasks (Ray) decoding
    # from the start of the run to the first vectors (worker and model start-up), and the
    # items decided by then: the rest divided by the rest of the time is the steady rate
    first_vectors_seconds: float | None = None
    items_by_first_vectors: int = 0

    def steady_images_per_s(self) -> float | None:
        """Items per second after the first vectors came back (None: too few to tell)."""
        if self.first_vectors_seconds is None:
            return None
        rest, span = len(self.status) - self.items_by_first_vectors, (
            self.seconds - self.first_vectors_seconds)
        return rest / span if rest > 0 and span > 0 else None

    def count(self, status: str) -> int:
        """How many items ended with `status`."""
        return sum(1 for s in self.status if s == status)


@dataclass
class ItemLoader:
    """Reads, hashes, decodes and preprocesses one catalog image (in a worker process or a
    Ray task): the one decoding step both engines share."""

    preprocess: Preprocessor
    limits: EmbedLimits
    previous: Mapping[str, str]        # id -> sha256 in the index being updated
    stored: Mapping[str, str]          # id -> sha256 already in the store
    stored_shas: Mapping[str, tuple[int, int]]     # sha256 -> (part, offset) in the store

    def load(self, pos: int, item_id: str, path: str) -> Loaded:
        sha = None
        try:
            # a regular file only (a FIFO would hang the job, /dev/zero fill the memory),
            # read at most max_bytes + 1
            data = read_image_file(path, self.limits.max_bytes)
            sha = hashlib.sha256(data).hexdigest()
            if self.previous.get(item_id) == sha:
                return Loaded(pos, sha, "unchanged", None)
            if self.stored.get(item_id) == sha:
                return Loaded(pos, sha, "stored", None)
            if sha in self.stored_shas:
                return Loaded(pos, sha, "cached", None)
            img = open_image(data, max_pixels=self.limits.max_pixels)
            return Loaded(pos, sha, "new", self.preprocess(img))
        except ImageError as exc:
            return Loaded(pos, sha, "rejected", reason=exc.reason, detail=str(exc))
        except FileNotFoundError:
            return Loaded(pos, sha, "rejected", reason="missing", detail="no such file")
        except OSError as exc:
            return Loaded(pos, sha, "rejected", reason="unreadable",
                          detail=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the job
            return Loaded(pos, sha, "rejected", reason="decode_error",
                          detail=f"{type(exc).__name__}: {exc}")


class _ImageDataset(Dataset[Loaded]):
    """One catalog image per index, through an :class:`ItemLoader` (DataLoader workers)."""

    def __init__(self, items: list[CatalogItem], loader: ItemLoader) -> None:
        self.items = [(it.id, it.image) for it in items]
        self.loader = loader

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, pos: int) -> Loaded:
        item_id, path = self.items[pos]
        return self.loader.load(pos, item_id, path)


def _collate(batch: list[Loaded]) -> list[Loaded]:
    return batch


def default_workers() -> int:
    """Decode workers: one per spare usable CPU (see `available_cpus`), 1 to 8."""
    return max(1, min(8, available_cpus() - 1))


def embed_batch(emb: Embedder, prepared: Sequence[PreparedImage],
                ) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """Embed a batch; on failure isolate the bad images one by one.

    Returns (indices that succeeded, their vectors [n, A, D], [(index, error)]).
    """
    try:
        return list(range(len(prepared))), emb.embed_all_prepared(prepared), []
    except Exception:  # noqa: BLE001 - fall back to find the culprit
        ok: list[int] = []
        vecs: list[np.ndarray] = []
        bad: list[tuple[int, str]] = []
        for i, p in enumerate(prepared):
            try:
                vecs.append(emb.embed_all_prepared([p])[0])
                ok.append(i)
            except Exception as exc:  # noqa: BLE001
                bad.append((i, f"{type(exc).__name__}: {exc}"))
        arr = np.stack(vecs) if vecs else np.zeros((0, len(emb.attribute_names), emb.dim),
                                                    dtype=np.float32)
        return ok, arr, bad


class Collector:
    """The driver's side of an embedding run, whatever the engine: per-item statuses, rows
    buffered and committed to the store as Parquet parts every `part_size` rows."""

    def __init__(self, items: list[CatalogItem], store: EmbeddingStore, attributes: list[str],
                 part_size: int, dtype: str) -> None:
        self.items, self.store, self.attributes = items, store, attributes
        self.part_size, self.dtype = part_size, dtype
        self.out = EmbedOutcome(shas=[None] * len(items), status=["pending"] * len(items))
        self._ids: list[str] = []
        self._shas: list[str] = []
        self._vecs: list[np.ndarray] = []
        self._buffered: dict[str, np.ndarray] = {}   # sha256 -> [A, D] not yet committed
        self._crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        self._start = time.perf_counter()
        self._decided = 0
        self._computed = 0

    def batch_done(self, n: int) -> None:
        """`n` more items decided; the first batch with vectors marks the start-up's end."""
        self._decided += n
        if self.out.first_vectors_seconds is None and self._computed:
            self.out.first_vectors_seconds = time.perf_counter() - self._start
            self.out.items_by_first_vectors = self._decided

    def finish(self) -> EmbedOutcome:
        """Commit what is buffered and time the run."""
        self.flush()
        self.out.seconds = time.perf_counter() - self._start
        return self.out

    def _keep(self, pos: int, sha: str, vecs: np.ndarray) -> None:
        self._ids.append(self.items[pos].id)
        self._shas.append(sha)
        self._vecs.append(vecs)
        self._buffered.setdefault(sha, vecs)

    def loaded(self, rec: Loaded) -> bool:
        """Record a decoded item; True when it still needs embedding."""
        pos, sha = rec.pos, rec.sha
        self.out.shas[pos] = sha
        if rec.status == "rejected" or sha is None:     # only a rejected item has no hash
            self.reject(pos, rec.reason or "unreadable", rec.detail)
        elif rec.status in ("new", "cached") and sha in self._buffered:
            self.out.status[pos] = "cached"
            self._keep(pos, sha, self._buffered[sha])
        elif rec.status == "cached":
            self.out.status[pos] = "cached"
            self._keep(pos, sha, self.store.row_by_sha(sha))
        elif rec.status == "new":
            return True
        else:                                   # unchanged, stored
            self.out.status[pos] = "cached" if rec.status == "stored" else rec.status
        return False

    def computed(self, pos: int, sha: str, vecs: np.ndarray) -> None:
        """An item embedded now: vectors [A, D]."""
        self.out.status[pos] = "computed"
        self._computed += 1
        self._keep(pos, sha, vecs)

    def reject(self, pos: int, reason: str, detail: str) -> None:
        self.out.status[pos] = "rejected"
        self.out.shas[pos] = None
        it = self.items[pos]
        self.out.rejects.append(Reject(it.image, it.id, reason, detail))

    def maybe_flush(self) -> None:
        if len(self._ids) >= self.part_size:
            self.flush()

    def flush(self) -> None:
        """Commit the buffered rows as one part (the crash test seam fires here)."""
        if not self._ids:
            return
        self.store.write(self._ids, self._shas, np.stack(self._vecs), self.attributes,
                         self.dtype)
        self._ids, self._shas, self._vecs = [], [], []
        self._buffered.clear()
        if self._crash_after and self.store.written >= self._crash_after:
            os.kill(os.getpid(), signal.SIGKILL)


def item_loader(preprocess: Preprocessor, store: EmbeddingStore, limits: EmbedLimits | None,
                previous: Mapping[str, str] | None) -> ItemLoader:
    """The decoding step for a run into `store`."""
    return ItemLoader(preprocess, limits or EmbedLimits(), previous or {}, store.id_hashes(),
                      store.by_sha)


def _prepared(rec: Loaded) -> PreparedImage:
    if rec.prepared is None:
        raise ValueError(f"catalog item {rec.pos} ({rec.status}) has no decoded image")
    return rec.prepared


def embed_catalog(emb: Embedder, items: list[CatalogItem], store: EmbeddingStore, *,
                  previous: Mapping[str, str] | None = None, batch_size: int = 32,
                  workers: int | None = None, part_size: int = 1024,
                  limits: EmbedLimits | None = None, progress: bool = True,
                  dtype: str = "float32") -> EmbedOutcome:
    """Embed every item the store lacks, committing a Parquet part every `part_size` rows.

    Final statuses: "computed" (embedded now), "cached" (already stored under this id, or
    copied from the same image under another id), "unchanged" (same hash as in `previous`,
    id -> sha256 of the index being updated: not stored at all) or "rejected".
    """
    workers = default_workers() if workers is None else workers
    dataset = _ImageDataset(items, item_loader(emb.preprocess, store, limits, previous))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, prefetch_factor=4 if workers > 0 else None,
        # no pin_memory: the batches are lists of dataclasses, which the loader cannot pin;
        # the embedder pins each stacked batch before its copy to the GPU instead
    )
    col = Collector(items, store, list(emb.attribute_names), part_size, dtype)
    bar = tqdm(total=len(items), unit="img", disable=not progress, smoothing=0.1,
               desc="embedding", dynamic_ncols=True)
    try:
        for batch in loader:
            todo = [rec for rec in batch if col.loaded(rec)]
            if todo:
                ok, vecs, bad = embed_batch(emb, [_prepared(r) for r in todo])
                for i, err in bad:
                    col.reject(todo[i].pos, "embed_error", err)
                for j, i in enumerate(ok):
                    col.computed(todo[i].pos, str(todo[i].sha), vecs[j])
            col.batch_done(len(batch))
            col.maybe_flush()
            bar.update(len(batch))
            bar.set_postfix(rejected=len(col.out.rejects), refresh=False)
        out = col.finish()
    finally:
        bar.close()
    out.model_threads = [torch.get_num_threads()]
    out.decode_workers = workers
    return out


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads for the main process (None: leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)
