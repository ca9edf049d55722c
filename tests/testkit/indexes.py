"""The indexer CLI as a subprocess, and the tiny synthetic index the service tests serve."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testkit.datasets import read_rows, synthetic_dataset, tiny_checkpoint, write_rows

REPO_ROOT = Path(__file__).resolve().parents[2]  # tests/testkit/ is two levels below it

#: the embedding runs' precision: fp32 on every kind of host, as the tests' servers run
#: (tests/conftest.py; the indexer's default, auto, is bf16 on a CPU with native bf16)
PRECISION = ("--precision", os.environ.get("ASEN_PRECISION", "fp32"))


def run_indexer(catalog: Path, checkpoint: Path, out: Path, *extra: str) -> str:
    """``python -m indexer`` (the one-shot job) as a subprocess; returns its output (raises
    on failure)."""
    return _indexer("--catalog", str(catalog), "--checkpoint", str(checkpoint), "--out",
                    str(out), "--workers", "0", "--no-progress", *PRECISION, *extra)


def run_indexer_stage(stage: str, *args: str) -> str:
    """``python -m indexer embed|build ARGS`` as a subprocess; returns its output (raises on
    failure)."""
    return _indexer(stage, *args)


def _indexer(*args: str) -> str:
    cmd = [sys.executable, "-m", "indexer", *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@dataclass(frozen=True)
class TinyIndex:
    """A synthetic catalog, a checkpoint and the index the indexer CLI built from them."""

    root: Path
    catalog: Path
    checkpoint: Path
    index_dir: Path

    def image(self, item_id: str) -> Path:
        """The image file of a catalog item."""
        for row in read_rows(self.catalog):
            if row["id"] == item_id:
                return (self.catalog.parent / row["image"]).resolve()
        raise KeyError(item_id)

    def item_ids(self) -> list[str]:
        """The catalog's ids, in catalog order."""
        return [row["id"] for row in read_rows(self.catalog)]


def tiny_index(root: Path, n_train: int = 40, n_test: int = 8, size: int = 128, seed: int = 0,
               checkpoint: Path | None = None) -> TinyIndex:
    """Build in ``root`` a synthetic catalog (``n_train`` + 2 + ``n_test`` items), a
    checkpoint (default: a random tiny one) and its index."""
    data = synthetic_dataset(root / "data", seed=seed, n_train=n_train, n_valid=2,
                             n_test=n_test, size=size)
    if checkpoint is None:
        checkpoint = tiny_checkpoint(root / "tiny.pt", data, seed=seed)
    index_dir = root / "index"
    run_indexer(data / "catalog.csv", checkpoint, index_dir)
    return TinyIndex(root, data / "catalog.csv", checkpoint, index_dir)


@dataclass(frozen=True)
class ProductCatalog:
    """The tiny index's catalog with a ``product_id`` column (3 consecutive items per
    product) and an ``edition`` column ("limited" for the last item only, "regular" for the
    rest), its embeddings store and a flat index built from that store."""

    base: TinyIndex
    catalog: Path
    embeddings: Path
    index_dir: Path

    def build(self, out: Path, *extra: str) -> Path:
        """Another index of the same store (e.g. ``--index-type hnsw``)."""
        run_indexer_stage("build", "--embeddings", str(self.embeddings), "--catalog",
                          str(self.catalog), "--checkpoint", str(self.base.checkpoint),
                          "--out", str(out), *extra)
        return out


def product_id(position: int, group_size: int = 3) -> str:
    """The product of the catalog row at ``position``."""
    return f"p{position // group_size:03d}"


def product_catalog(base: TinyIndex, root: Path) -> ProductCatalog:
    """Build in ``root`` the product catalog of ``base`` (beside its images), its store and
    its flat index."""
    rows = read_rows(base.catalog)
    catalog = write_rows(
        base.catalog.with_name("catalog-products.csv"),
        [{**row, "product_id": product_id(i),
          "edition": "limited" if i == len(rows) - 1 else "regular"}
         for i, row in enumerate(rows)])
    embeddings = root / "products-emb"
    run_indexer_stage("embed", "--catalog", str(catalog), "--checkpoint",
                      str(base.checkpoint), "--out", str(embeddings), "--workers", "0",
                      "--no-progress", *PRECISION)
    products = ProductCatalog(base, catalog, embeddings, root / "products-flat")
    products.build(products.index_dir, "--index-type", "flat")
    return products


#: small batches and shards, one decode worker, no progress bar: a few dozen images make
#: several shards and batches
FAST = ("--no-progress", "--workers", "1", "--batch-size", "8", "--checkpoint-every", "8",
        *PRECISION)


def index_catalog(catalog: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    """The one-shot job (``python -m indexer``) in this process with ``FAST`` settings;
    returns its exit code."""
    from indexer.cli import main

    return main(["--catalog", str(catalog), "--checkpoint", str(checkpoint), "--out",
                 str(out), *FAST, *extra])


def embed_catalog(catalog: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    """``python -m indexer embed`` in this process with ``FAST`` settings; returns its exit
    code."""
    from indexer.cli import main

    return main(["embed", "--catalog", str(catalog), "--checkpoint", str(checkpoint),
                 "--out", str(out), *FAST, *extra])


def build_index(embeddings: Path, catalog: Path, out: Path, *extra: str) -> int:
    """``python -m indexer build`` in this process; returns its exit code."""
    from indexer.cli import main

    return main(["build", "--embeddings", str(embeddings), "--catalog", str(catalog),
                 "--out", str(out), *extra])


def run_indexer_killed(*args: str, after_shards: int = 2) -> subprocess.CompletedProcess:
    """``python -m indexer ARGS`` (with ``FAST`` settings) in a subprocess that kills itself
    with SIGKILL once ``after_shards`` shards are written (ASEN_INDEXER_CRASH_AFTER_SHARDS)."""
    env = {**os.environ, "ASEN_INDEXER_CRASH_AFTER_SHARDS": str(after_shards),
           "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "indexer", *args, *FAST], cwd=REPO_ROOT,
                          env=env, capture_output=True, timeout=120)
