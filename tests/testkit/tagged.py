"""A catalog to tag (issue 22): clustered vectors whose cluster is an item's true value, a
catalog with a label column for half the items (some spelled with other case and blanks, a
few naming a value the checkpoint does not know), and a tiny checkpoint that keeps value
prototypes and a calibration. Built with `python -m indexer build` from the store, in this
process (no image is embedded: the vectors are the data).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from testkit.datasets import tiny_checkpoint
from testkit.images import write_image

#: attribute -> its values in the checkpoint; "neckline" has a catalog label column,
#: "colour" none (every colour is predicted)
VALUES = {"neckline": ["round", "v", "square"], "colour": ["black", "white", "red", "blue"]}
TEMPERATURES = {"neckline": 0.3, "colour": 0.25}
NEW_VALUE = "Boat"        # a label the checkpoint does not know: a value of the catalog's


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class TaggedCatalog:
    """The catalog, its store, the checkpoint and what each item truly is."""

    root: Path
    catalog: Path
    store: Path
    checkpoint: Path
    ids: list[str]
    vectors: dict[str, np.ndarray]        # attribute -> [n, dim]
    labels: list[str]                     # the catalog's neckline column ("" = none)
    centers: dict[str, np.ndarray]        # attribute -> [values, dim]

    def label_of(self, item_id: str) -> str:
        return self.labels[self.ids.index(item_id)]


def _label(n: int, truth: int) -> str:
    """Items n % 2 == 0 are labelled; a few with other spellings, three with NEW_VALUE."""
    if n % 2:
        return ""
    if n in (10, 20, 30):
        return NEW_VALUE
    name = VALUES["neckline"][truth]
    return f"  {name.upper()} " if n % 6 == 0 else name


def write_store(folder: Path, ids: list[str], vectors: dict[str, np.ndarray],
                salt: dict[str, str] | None = None) -> Path:
    """A Parquet embeddings store (id, sha256, one list<float32> column per attribute);
    `salt` changes an id's hash (a changed image)."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = {"id": pa.array(ids),
            "sha256": pa.array([hashlib.sha256((i + (salt or {}).get(i, "")).encode())
                                .hexdigest() for i in ids])}
    for name, v in vectors.items():
        cols[name] = pa.array(list(v), pa.list_(pa.float32()))
    pq.write_table(pa.table(cols), folder / "vectors_0.parquet")
    return folder


def write_catalog(path: Path, ids: list[str], labels: list[str]) -> Path:
    """The catalog CSV: id, image, product_id, neckline (the label column)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "product_id", "neckline"])
        for n, (i, lab) in enumerate(zip(ids, labels, strict=True)):
            w.writerow([i, f"images/{i}.png", f"p-{n // 3}", lab])
    return path


def tagged_catalog(root: Path, n: int = 90, seed: int = 0) -> TaggedCatalog:
    """Write the catalog, the store and a tiny checkpoint with prototypes under `root`."""
    from model import load_model
    from model.prototypes import compute_prototypes, write_prototypes
    from model.tagging import Calibration

    root.mkdir(parents=True, exist_ok=True)
    checkpoint = tiny_checkpoint(root / "tiny.pt", [(a, len(v)) for a, v in VALUES.items()])
    dim = load_model(checkpoint, device="cpu").dim
    rng = np.random.default_rng(seed)
    centers = {a: unit(rng.normal(size=(len(v), dim))) for a, v in VALUES.items()}

    def draw(attr: str, truth: np.ndarray) -> np.ndarray:
        return unit(centers[attr][truth] + 0.09 * rng.normal(size=(len(truth), dim)))

    train = {a: rng.integers(0, len(v), 200) for a, v in VALUES.items()}
    protos = compute_prototypes({a: draw(a, t) for a, t in train.items()}, train, "train",
                                VALUES)
    write_prototypes(checkpoint, protos, Calibration(TEMPERATURES, "tests: synthetic clusters"))
    truth = {a: rng.integers(0, len(v), n) for a, v in VALUES.items()}
    vectors = {a: draw(a, t) for a, t in truth.items()}
    ids = [f"sku-{k:03d}" for k in range(n)]
    labels = [_label(k, int(truth["neckline"][k])) for k in range(n)]
    catalog = write_catalog(root / "catalog.csv", ids, labels)
    for k, i in enumerate(ids[:4]):
        write_image(root / "images" / f"{i}.png", (40 * k, 90, 200))
    store = write_store(root / "emb", ids, vectors)
    return TaggedCatalog(root, catalog, store, checkpoint, ids, vectors, labels, centers)
