"""The embeddings store: the file format between `indexer embed` and `indexer build`.

An EMB_DIR holds Parquet files (`*.parquet`, read in name order) with the columns

    id        string   the catalog id
    sha256    string   sha256 of the image bytes that were embedded
    <attr>    list or fixed-size list of float16 / float32: the unit-norm vector of the
              attribute named by the column (one column per attribute, one dimension)

plus, when written by `indexer embed`, `store.json` (:class:`StoreMeta`: the model, device
and the last run's :class:`EmbedStats`) and `rejected.csv` (`path,id,reason` of the last
run, :func:`model.rejected.write_rejected`). A store written by another tool needs only the
Parquet files.
A later file that repeats an id supersedes the earlier row (that is how a resumed or
repeated `embed` replaces changed images); `embed` compacts superseded and deleted rows away
when it finishes. Each part is written to a temporary name and renamed into place, so a
killed job leaves only complete parts.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexer.layout import WriterLock
from indexer.manifest import ModelInfo
from model.attributes import AttributeSpec
from model.osutil import atomic_write_bytes, replace_atomically
from model.rejected import REJECTED, Reject, write_rejected

STORE_META = "store.json"
STORE_LOCK = ".lock"
STORE_FORMAT = "asen-embeddings/1"
KEY_COLUMNS = ("id", "sha256")
NORM_TOLERANCE = 1e-2
DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}


class StoreError(ValueError):
    """The embeddings store is unusable (bad columns, types, dimensions, norms)."""


@dataclass
class EmbedStats:
    """What an `embed` run did: store.json's `last_run` (and the manifest's `build` counts).

    The defaults describe a run nothing is known of (a store.json without `last_run`)."""

    catalog_path: str = ""
    catalog_sha256: str = ""
    entries: int = 0                    # catalog rows
    seconds: float = 0.0
    images_per_s: float | None = None
    first_vectors_seconds: float | None = None
    steady_images_per_s: float | None = None
    computed: int = 0
    cached: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    compacted: int = 0
    engine: str | None = None
    device: str | None = None
    workers: int | None = None
    batch_size: int | None = None
    model_threads: list[int] = field(default_factory=list)
    finished_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The `last_run` document (`catalog` nested as {"path", "sha256", "entries"})."""
        doc = asdict(self)
        catalog = {"path": doc.pop("catalog_path"), "sha256": doc.pop("catalog_sha256"),
                   "entries": doc.pop("entries")}
        return {"catalog": catalog, **doc}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> EmbedStats:
        """Parse `last_run`; keys it lacks keep their defaults, unknown keys are ignored."""
        catalog = doc.get("catalog") or {}
        known = {f.name for f in fields(cls)}
        return cls(catalog_path=str(catalog.get("path", "")),
                   catalog_sha256=str(catalog.get("sha256", "")),
                   entries=int(catalog.get("entries", 0)),
                   **{k: v for k, v in doc.items() if k in known and k != "entries"})


@dataclass
class StoreMeta:
    """`store.json`: the model, device and dtype of a store's vectors and its last run.

    On disk: `{"format": "asen-embeddings/1", "job_key", "model": {as in the manifest},
    "attributes": [{"name", "n_values"}], "device", "dtype", "last_run": {...}}`
    (`last_run` absent until a run has finished)."""

    job_key: str | None = None
    model: ModelInfo | None = None
    attributes: list[AttributeSpec] = field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    last_run: EmbedStats | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": STORE_FORMAT, "job_key": self.job_key,
            "model": None if self.model is None else self.model.to_dict(),
            "attributes": [a.to_dict() for a in self.attributes],
            "device": self.device, "dtype": self.dtype}
        if self.last_run is not None:
            doc["last_run"] = self.last_run.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = STORE_META) -> StoreMeta:
        """Parse a store.json document (StoreError naming `where` when malformed)."""
        try:
            return cls(
                job_key=doc.get("job_key"),
                model=ModelInfo.from_dict(doc["model"]) if doc.get("model") else None,
                attributes=[AttributeSpec(str(a["name"]), int(a.get("n_values") or 0))
                            for a in doc.get("attributes") or []],
                device=doc.get("device"), dtype=doc.get("dtype"),
                last_run=EmbedStats.from_dict(doc["last_run"]) if doc.get("last_run")
                else None)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> StoreMeta | None:
        """`root/store.json`, or None for a store written by another tool."""
        path = Path(root) / STORE_META
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise StoreError(f"{path}: expected a JSON object")
        return cls.from_dict(doc, str(path))

    def write(self, root: str | os.PathLike[str]) -> None:
        """Write `root/store.json` atomically."""
        Path(root).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(root) / STORE_META,
                           json.dumps(self.to_dict(), indent=1).encode())


@dataclass
class _Part:
    path: Path
    ids: list[str]
    shas: list[str]


def _matrix(col: pa.ChunkedArray | pa.Array, dim: int | None, where: str) -> np.ndarray:
    """A list / fixed-size-list column as a [n, D] numpy array (float16 or float32)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise StoreError(f"{where}: {arr.null_count} null vectors")
    t = arr.type
    if pa.types.is_fixed_size_list(t):
        width = t.list_size
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if len(lengths) else (dim or 0)
        if len(lengths) and (lengths != width).any():
            raise StoreError(f"{where}: vectors of different lengths")
    else:
        raise StoreError(f"{where}: expected a list of float16/float32, got {t}")
    if not (pa.types.is_float32(t.value_type) or pa.types.is_float16(t.value_type)):
        raise StoreError(f"{where}: expected float16 or float32 values, got {t.value_type}")
    if dim is not None and width != dim:
        raise StoreError(f"{where}: dimension {width}, expected {dim}")
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(arr), width)


class EmbeddingStore:
    """One EMB_DIR: which ids (and image hashes) it holds, their vectors, new parts."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._parts: list[_Part] = []
        self.attributes: list[str] = []
        self.dim: int | None = None
        self.where: dict[str, tuple[int, int]] = {}     # id -> (part, offset), last wins
        self.by_sha: dict[str, tuple[int, int]] = {}    # sha256 -> a (part, offset)
        self._written = 0
        if self.root.is_dir():
            for path in sorted(self.root.glob("*.parquet")):
                self._scan(path)

    # -- reading -----------------------------------------------------------------------------
    def _scan(self, path: Path) -> None:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{path}: not a Parquet file ({exc})") from None
        names = list(schema.names)
        missing = [c for c in KEY_COLUMNS if c not in names]
        if missing:
            raise StoreError(f"{path}: missing column(s) {missing}; has {names}")
        attrs = [n for n in names if n not in KEY_COLUMNS]
        if not attrs:
            raise StoreError(f"{path}: no attribute columns besides id and sha256")
        if not self._parts:
            self.attributes = attrs
        elif attrs != self.attributes:
            raise StoreError(f"{path}: attribute columns {attrs} differ from {self.attributes}")
        table = pq.read_table(path, columns=list(KEY_COLUMNS))
        ids = [str(x) for x in table.column("id").to_pylist()]
        shas = [str(x) for x in table.column("sha256").to_pylist()]
        if len(set(ids)) != len(ids):
            raise StoreError(f"{path}: the same id appears twice in one file")
        if self.dim is None and len(ids):
            first = pq.read_table(path, columns=[attrs[0]]).column(0).slice(0, 1)
            self.dim = _matrix(first, None, f"{path}:{attrs[0]}").shape[1]
        num = len(self._parts)
        self._parts.append(_Part(path, ids, shas))
        for off, (i, s) in enumerate(zip(ids, shas, strict=True)):
            self.where[i] = (num, off)
            self.by_sha.setdefault(s, (num, off))

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.where

    @property
    def part_count(self) -> int:
        return len(self._parts)

    @property
    def written(self) -> int:
        """Parts written by this object (the crash test seam counts them)."""
        return self._written

    def sha(self, item_id: str) -> str | None:
        loc = self.where.get(item_id)
        return None if loc is None else self._parts[loc[0]].shas[loc[1]]

    def id_hashes(self) -> dict[str, str]:
        """id -> sha256 of every stored item."""
        return {i: self._parts[p].shas[o] for i, (p, o) in self.where.items()}

    def _column(self, num: int, attribute: str) -> np.ndarray:
        part = self._parts[num]
        col = pq.read_table(part.path, columns=[attribute]).column(0)
        return _matrix(col, self.dim, f"{part.path.name}:{attribute}")

    def vectors(self, attribute: str, ids: Sequence[str],
                out: np.ndarray | None = None) -> np.ndarray:
        """float32 vectors [len(ids), D] of one attribute, in the order given (checked to be
        unit-norm). `out` may be a preallocated (e.g. memory-mapped) array to fill."""
        if not len(ids):
            return np.zeros((0, self.dim or 0), np.float32) if out is None else out
        if attribute not in self.attributes:
            raise StoreError(f"no column {attribute!r} in {self.root}; has {self.attributes}")
        out = np.empty((len(ids), self.dim or 0), np.float32) if out is None else out
        locs = np.array([self.where[i] for i in ids], dtype=np.int64)
        for num in np.unique(locs[:, 0]):
            mask = np.flatnonzero(locs[:, 0] == num)
            block = self._column(int(num), attribute)[locs[mask, 1]].astype(np.float32)
            norms = np.linalg.norm(block, axis=1)
            bad = np.flatnonzero(np.abs(norms - 1) > NORM_TOLERANCE)
            if len(bad):
                item = ids[int(mask[bad[0]])]
                raise StoreError(f"{attribute} vector of id {item!r} has norm "
                                 f"{norms[bad[0]]:.4f}; the store holds unit-norm vectors")
            out[mask] = block
        return out

    def row_by_sha(self, sha: str) -> np.ndarray:
        """All attributes' vectors [A, D] stored for an image hash."""
        num, off = self.by_sha[sha]
        return np.stack([self._column(num, a)[off] for a in self.attributes]).astype(np.float32)

    # -- writing -----------------------------------------------------------------------------
    def write(self, ids: list[str], shas: list[str], vectors: np.ndarray,
              attributes: list[str], dtype: str = "float32") -> Path:
        """Commit one part: vectors [n, A, D] for `attributes`; returns its path."""
        if not (len(ids) == len(shas) == len(vectors)):
            raise ValueError("ids, shas and vectors differ in length")
        if self._parts and attributes != self.attributes:
            raise StoreError(f"attributes {attributes} differ from the store's "
                             f"{self.attributes}")
        np_type, pa_type = DTYPES[dtype]
        self.root.mkdir(parents=True, exist_ok=True)
        dim = vectors.shape[2]
        cols = {"id": pa.array(ids, pa.string()), "sha256": pa.array(shas, pa.string())}
        for a, name in enumerate(attributes):
            flat = pa.array(np.ascontiguousarray(vectors[:, a]).astype(np_type).ravel(), pa_type)
            cols[name] = pa.FixedSizeListArray.from_arrays(flat, dim)
        last = max((int(p.path.stem.split("-")[1]) for p in self._parts
                    if p.path.stem.startswith("part-") and p.path.stem[5:].isdigit()),
                   default=-1)
        path = self.root / f"part-{last + 1:06d}.parquet"
        self._write_table(pa.table(cols), path)
        if not self._parts:
            self.attributes, self.dim = list(attributes), dim
        self._scan_written(path, ids, shas)
        self._written += 1
        return path

    def _scan_written(self, path: Path, ids: list[str], shas: list[str]) -> None:
        num = len(self._parts)
        self._parts.append(_Part(path, list(ids), list(shas)))
        for off, (i, s) in enumerate(zip(ids, shas, strict=True)):
            self.where[i] = (num, off)
            self.by_sha.setdefault(s, (num, off))

    @staticmethod
    def _write_table(table: pa.Table, path: Path) -> None:
        # dictionary encoding only for the id columns: on the vector columns parquet tries it
        # on every part and gives up, which made writing and reading a part several times slower
        dictionary = [c for c in ("id", "sha256") if c in table.column_names]
        replace_atomically(path, lambda tmp: pq.write_table(table, tmp,
                                                            use_dictionary=dictionary))

    def compact(self, live: set[str]) -> int:
        """Drop rows that are superseded or whose id is not in `live`; returns rows dropped."""
        dropped = 0
        for num, part in enumerate(self._parts):
            keep = [off for off, i in enumerate(part.ids)
                    if i in live and self.where.get(i) == (num, off)]
            if len(keep) == len(part.ids):
                continue
            dropped += len(part.ids) - len(keep)
            if keep:
                table = pq.read_table(part.path).take(pa.array(keep, pa.int64()))
                self._write_table(table, part.path)
            else:
                part.path.unlink()
        fresh = EmbeddingStore(self.root)
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "_written"})
        return dropped

    @staticmethod
    def writer_lock(root: str | os.PathLike[str]) -> WriterLock:
        """The lock `embed` holds while it writes the store at `root` (one writer at a time)."""
        return WriterLock(Path(root) / STORE_LOCK, str(root))

    # -- side files --------------------------------------------------------------------------
    def read_rejects(self) -> dict[str, Reject]:
        """id -> reject of the last embedding run ({} when there is no rejected.csv)."""
        path = self.root / REJECTED
        if not path.is_file():
            return {}
        with open(path, newline="", encoding="utf-8") as f:
            return {r["id"]: Reject(r.get("path", ""), r["id"], r.get("reason", ""))
                    for r in csv.DictReader(f)}

    def write_rejects(self, rejects: Sequence[Reject]) -> None:
        """The last run's rejected.csv (see :func:`write_rejected`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_rejected(self.root, rejects)

    def remove(self) -> None:
        """Delete the whole store folder."""
        shutil.rmtree(self.root, ignore_errors=True)
