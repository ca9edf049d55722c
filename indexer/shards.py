"""Embedding checkpoints written while the job runs, so a killed job resumes.

A shard is a pair of files in the job's work folder: `shard-NNNNNN.npy` (float32
[n, A, D]) and `shard-NNNNNN.json` (the images' content sha256, in the same order). The
JSON file is written last and is the commit marker: a shard without it is ignored. The
store is content-addressed: an image whose bytes hash to a known sha256 is not embedded
again, whatever its id.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

_SHARD_RE = re.compile(r"^shard-(\d{6})\.json$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardStore:
    """Embedding shards of one job (keyed by its parameters) in one folder."""

    def __init__(self, root: str | os.PathLike, job: dict | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if job is not None:
            atomic_write_bytes(self.root / "job.json", json.dumps(job, indent=1).encode())
        self.locations: dict[str, tuple[int, int]] = {}
        self._shards: list[int] = []
        self._mmaps: dict[int, np.ndarray] = {}
        for name in sorted(os.listdir(self.root)):
            m = _SHARD_RE.match(name)
            if not m or not (self.root / f"shard-{m.group(1)}.npy").exists():
                continue
            num = int(m.group(1))
            shas = json.loads((self.root / name).read_text())["sha256"]
            self._shards.append(num)
            for off, sha in enumerate(shas):
                self.locations.setdefault(sha, (num, off))

    @property
    def shard_count(self) -> int:
        """Number of committed shards."""
        return len(self._shards)

    def __contains__(self, sha: str) -> bool:
        return sha in self.locations

    def __len__(self) -> int:
        return len(self.locations)

    def write(self, shas: list[str], vectors: np.ndarray) -> int:
        """Commit one shard of embeddings [n, A, D]; returns its number."""
        if len(shas) != len(vectors):
            raise ValueError("shas and vectors differ in length")
        num = (self._shards[-1] + 1) if self._shards else 0
        npy = self.root / f"shard-{num:06d}.npy"
        tmp = self.root / f".shard-{num:06d}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(vectors, dtype=np.float32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, npy)
        meta = json.dumps({"sha256": list(shas)}).encode()
        atomic_write_bytes(self.root / f"shard-{num:06d}.json", meta)
        self._shards.append(num)
        for off, sha in enumerate(shas):
            self.locations.setdefault(sha, (num, off))
        return num

    def _array(self, num: int) -> np.ndarray:
        arr = self._mmaps.get(num)
        if arr is None:
            arr = np.load(self.root / f"shard-{num:06d}.npy", mmap_mode="r")
            self._mmaps[num] = arr
        return arr

    def gather(self, shas: list[str], attribute: int) -> np.ndarray:
        """Embeddings [len(shas), D] of one attribute, in the order given."""
        if not shas:
            return np.zeros((0, 0), dtype=np.float32)
        locs = np.array([self.locations[s] for s in shas], dtype=np.int64)
        dim = self._array(int(locs[0, 0])).shape[2]
        out = np.empty((len(shas), dim), dtype=np.float32)
        for num in np.unique(locs[:, 0]):
            mask = locs[:, 0] == num
            out[mask] = self._array(int(num))[locs[mask, 1], attribute]
        return out

    def remove(self) -> None:
        """Delete the whole work folder (after a successful publish)."""
        self._mmaps.clear()
        shutil.rmtree(self.root, ignore_errors=True)
