"""`--engine ray`: the embedding step on Ray Data, locally or on a cluster.

The catalog becomes a Ray dataset; CPU tasks read, hash, decode and preprocess the images
(the same :class:`ItemLoader` as the local engine); a pool of model actors (one per GPU,
`num_gpus=1`, where the cluster has GPUs; else CPU actors) embeds them; the driver collects
the results in catalog order and writes the Parquet store through the same
:class:`Collector`, so both engines give the same ids, rejects and vectors, and a killed job
resumes the same way. Without an address a local Ray is started (and stopped afterwards);
with one (`ray://...` or `host:port`, or `auto`) the job joins that cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from indexer.catalog import CatalogItem
from indexer.embed.local_engine import (
    Collector,
    EmbedOutcome,
    ItemLoader,
    Loaded,
    embed_batch,
    set_threads,
)
from indexer.embed.store import EmbeddingStore
from model.memory import one_arena_env
from model.osutil import available_cpus
from model.precision import PrecisionChoice, explicit
from model.preprocess import PreparedImage
from model.roi import CropGeometry

DECODE_CPUS = 0.5


def _decode_batch(batch: dict[str, np.ndarray], loader: ItemLoader) -> dict[str, np.ndarray]:
    """CPU task: read, hash, decode and preprocess a batch of catalog rows."""
    recs = [loader.load(int(p), str(i), str(img))
            for p, i, img in zip(batch["pos"], batch["id"], batch["image"], strict=True)]
    return _to_columns(recs, loader.preprocess.input_size)


def _to_columns(recs: list[Loaded], size: int) -> dict[str, np.ndarray]:
    """Decoded rows as plain columns (tensors, bytes, numbers, strings).

    Ray stores them as Arrow arrays, which cross the object store without pickling; a
    column of `PreparedImage` objects was pickled in the decode task and unpickled in the
    actor, row by row, CPU taken from the model on a small machine (docs/SCALING.md).
    """
    n = len(recs)
    pixels = np.zeros((n, 3, size, size), dtype=np.float32)
    source = np.empty(n, dtype=object)
    source[:] = [b""] * n
    shape = np.zeros((n, 4), dtype=np.int64)        # source h, w; original width, height
    scale = np.ones(n, dtype=np.float64)
    reason = np.array([""] * n, dtype=object)
    detail = np.array([""] * n, dtype=object)
    for k, r in enumerate(recs):
        if r.status == "new" and (prep := r.prepared) is not None:
            pixels[k] = prep.pixels.numpy()
            src = prep.source.contiguous().numpy()
            source[k] = src.tobytes()
            shape[k] = (src.shape[1], src.shape[2], prep.geometry.width, prep.geometry.height)
            scale[k] = prep.source_scale
        elif r.status == "rejected":
            reason[k], detail[k] = r.reason, r.detail
    return {"pos": np.array([r.pos for r in recs], dtype=np.int64),
            "sha": np.array([r.sha or "" for r in recs], dtype=object),
            "status": np.array([r.status for r in recs], dtype=object),
            "pixels": pixels, "source": source, "shape": shape, "scale": scale,
            "reason": reason, "detail": detail}


def _prepared(batch: dict[str, np.ndarray], k: int) -> PreparedImage:
    """Row `k` of decoded columns back as the model's input."""
    h, w, width, height = (int(v) for v in batch["shape"][k])
    size = int(batch["pixels"].shape[-1])
    source = np.frombuffer(batch["source"][k], dtype=np.uint8).reshape(3, h, w).copy()
    return PreparedImage(torch.from_numpy(np.array(batch["pixels"][k], dtype=np.float32)),
                         torch.from_numpy(source), CropGeometry(width, height, size),
                         float(batch["scale"][k]))


def _resolve_precision(checkpoint: str, device: str, requested: str) -> PrecisionChoice:
    """Ray task: ``requested`` resolved by the model loaded as a model actor loads it (with
    the node's CPUs on a CPU, as :class:`EmbedActor` takes them)."""
    from model import load_model

    set_threads(available_cpus() if device == "cpu" else None)
    return load_model(checkpoint, device=device, precision=requested).precision_choice


class EmbedActor:
    """A model held by one Ray actor (one GPU each where the cluster has GPUs).

    Ray sets `OMP_NUM_THREADS` to an actor's `num_cpus` (1 here, so that decode tasks find
    room beside it), which would leave torch one thread. A CPU actor therefore takes every
    CPU its node lets it use, as the local engine's model does, unless `threads` is given
    (pass it when several CPU actors share a node).
    """

    def __init__(self, checkpoint: str, device: str, precision: str,
                 threads: int | None) -> None:
        from model import load_model

        if threads is None and device == "cpu":
            threads = available_cpus()
        set_threads(threads)
        self.emb = load_model(checkpoint, device=device, precision=precision)
        self.shape = (len(self.emb.attribute_names), int(self.emb.dim))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["pos"])
        status = batch["status"].copy()
        reason, detail = batch["reason"].copy(), batch["detail"].copy()
        vecs = np.zeros((n, *self.shape), dtype=np.float32)
        todo = [k for k in range(n) if status[k] == "new"]
        if todo:
            ok, got, bad = embed_batch(self.emb, [_prepared(batch, k) for k in todo])
            for j, i in enumerate(ok):
                vecs[todo[i]] = got[j]
                status[todo[i]] = "computed"
            for i, err in bad:
                status[todo[i]] = "rejected"
                reason[todo[i]], detail[todo[i]] = "embed_error", err
        # the pixels stay here: only statuses and vectors go back to the driver
        return {"pos": batch["pos"], "sha": batch["sha"], "status": status,
                "reason": reason, "detail": detail, "vecs": vecs,
                "threads": np.full(n, torch.get_num_threads(), dtype=np.int64)}


@dataclass
class RayEngine:
    """Where and how to run: cluster address (None: a local Ray), actor count, device."""

    address: str | None = None
    actors: int | None = None
    device: str | None = None          # None: cuda when the cluster has GPUs
    _started: bool = False
    _precisions: dict[tuple[str, str], PrecisionChoice] = field(default_factory=dict)

    def __enter__(self) -> RayEngine:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            self._started = True
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._started:
            ray.shutdown()
            self._started = False

    @property
    def gpus(self) -> int:
        import ray

        return int(ray.cluster_resources().get("GPU", 0))

    def device_type(self) -> str:
        """The device the actors embed on."""
        if self.device:
            return "cuda" if self.device.startswith("cuda") else "cpu"
        return "cuda" if self.gpus > 0 else "cpu"

    def resolve_precision(self, checkpoint: str, requested: str) -> PrecisionChoice:
        """``requested`` as the model actors run it: ``auto`` resolved once per checkpoint by
        a task on the actors' kind of device (one GPU, or a CPU node: a cluster of one kind
        of machine is assumed), an explicit precision as it is. The actors are then given
        the chosen precision, so they all embed alike."""
        if requested != "auto":
            return explicit(requested)
        key = (checkpoint, requested)
        if key not in self._precisions:
            import ray

            device = self.device_type()
            task = ray.remote(_resolve_precision).options(
                num_gpus=1 if device == "cuda" else 0, num_cpus=1,
                runtime_env={"env_vars": one_arena_env()})
            self._precisions[key] = ray.get(task.remote(checkpoint, device, requested))
        return self._precisions[key]

    def embed(self, checkpoint: str, attributes: list[str], items: list[CatalogItem],
              store: EmbeddingStore, loader: ItemLoader, *,
              batch_size: int, part_size: int, dtype: str, precision: str,
              threads: int | None, progress: bool) -> EmbedOutcome:
        """Embed `items` into `store` on the cluster (call inside `with engine:`)."""
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True      # results in catalog order
        ctx.enable_progress_bars = progress
        device = self.device_type()
        gpu = device == "cuda"
        size = self.actors or (max(1, self.gpus) if gpu else 1)
        rows = [{"pos": p, "id": it.id, "image": it.image} for p, it in enumerate(items)]
        ds = ray.data.from_items(rows)
        # decode tasks ask for less than the actors so Ray does not fuse the two stages into
        # the actors: decoding runs in parallel CPU tasks and streams to the model actors.
        # One task per CPU the actors leave (as the local engine has one decode worker per
        # spare CPU): more only start more processes that import torch and take CPU from
        # the model, since decoding is some 10x faster than embedding
        decoders = max(1, int(ray.cluster_resources().get("CPU", 1)) - size)
        decoded = ds.map_batches(partial(_decode_batch, loader=loader),
                                 batch_size=batch_size, num_cpus=DECODE_CPUS,
                                 concurrency=decoders)
        embedded = decoded.map_batches(
            EmbedActor, batch_size=batch_size,
            fn_constructor_kwargs={"checkpoint": checkpoint, "device": device,
                                   "precision": precision, "threads": threads},
            compute=ray.data.ActorPoolStrategy(size=size), num_gpus=1 if gpu else 0,
            num_cpus=1, runtime_env={"env_vars": one_arena_env()})
        col = Collector(items, store, attributes, part_size, dtype)
        model_threads: set[int] = set()
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            model_threads.update(int(t) for t in batch["threads"])
            _collect(col, batch)
        out = col.finish()
        out.model_threads = sorted(model_threads)
        out.decode_workers = decoders
        return out


def _collect(col: Collector, batch: dict[str, np.ndarray]) -> None:
    """Hand one batch of the actors' results to the driver's collector, in catalog order."""
    for k in range(len(batch["pos"])):
        pos, sha = int(batch["pos"][k]), str(batch["sha"][k]) or None
        status = str(batch["status"][k])
        if status == "computed":
            # an image seen earlier in this run is a copy, as in the local engine
            if col.loaded(Loaded(pos, sha, "new")) and sha is not None:
                col.computed(pos, sha, batch["vecs"][k])
        elif status == "rejected":
            col.loaded(Loaded(pos, sha, status, reason=str(batch["reason"][k]),
                              detail=str(batch["detail"][k])))
        else:
            col.loaded(Loaded(pos, sha, status))
    col.batch_done(len(batch["pos"]))
    col.maybe_flush()
