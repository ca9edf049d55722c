"""Synthetic datasets, tiny random checkpoints and CSV catalogs for the tests."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.attributes import AttributeSpec


def synthetic_dataset(out: Path, *, seed: int, n_train: int, n_valid: int, n_test: int,
                      size: int = 64) -> Path:
    """A synthetic dataset in the published layout (``model.training.synth``) in ``out``,
    drawn in this process; returns ``out`` (its ``catalog.csv`` lists every image)."""
    from model.training.synth import generate

    generate(out, seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test, size=size,
             workers=1)
    return out


def tiny_checkpoint(path: Path, attributes: Path | Sequence[AttributeSpec | tuple[str, int]],
                    seed: int = 0) -> Path:
    """A randomly initialised "tiny" model saved to ``path``: the same weights for the same
    ``seed`` whatever ran before (the global torch RNG is left as it was). ``attributes``: a
    dataset folder, or (name, n_values) pairs / specs."""
    import torch

    from model import build_model, save_checkpoint

    if isinstance(attributes, Path):
        from model.training.data import read_attributes

        attributes = read_attributes(attributes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_model("tiny", list(attributes))
    save_checkpoint(net, path)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: Sequence[dict[str, object]],
               fieldnames: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as CSV (columns: ``fieldnames`` or the first row's keys)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames or rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def subset_catalog(catalog: Path, out: Path, n: int) -> Path:
    """Write the first ``n`` rows of a CSV catalog to ``out`` (same relative image paths, so
    ``out`` belongs next to ``catalog``)."""
    return write_rows(out, read_rows(catalog)[:n])


#: broken catalog entries: id -> (image path relative to the catalog, the indexer's reason)
BROKEN_ITEMS = {"bad-missing": ("bad/nope.jpg", "missing"),
                "bad-empty": ("bad/empty.jpg", "empty"),
                "bad-text": ("bad/text.jpg", "not_an_image"),
                "bad-trunc": ("bad/truncated.jpg", "truncated"),
                "bad-bomb": ("bad/bomb.png", "too_large"),     # over --max-pixels 1000000
                "bad-dir": ("bad/folder.jpg", "not_a_file")}


def append_broken_items(catalog: Path, ids: Sequence[str] = tuple(BROKEN_ITEMS)
                        ) -> dict[str, str]:
    """Append to a CSV catalog one broken item of each of ``ids`` (keys of ``BROKEN_ITEMS``;
    their files go to ``bad/`` beside it); returns id -> the reason the indexer gives."""
    from PIL import Image

    bad = catalog.parent / "bad"
    bad.mkdir()
    rows = read_rows(catalog)
    good = (catalog.parent / rows[0]["image"]).read_bytes()
    makers = {"bad-empty": lambda p: p.write_bytes(b""),
              "bad-text": lambda p: p.write_text("this is not an image\n" * 20),
              "bad-trunc": lambda p: p.write_bytes(good[: len(good) // 2]),
              "bad-bomb": lambda p: Image.new("RGB", (2000, 1500), (200, 10, 10)).save(p),
              "bad-dir": lambda p: p.mkdir()}
    for item_id in ids:
        if item_id in makers:
            makers[item_id](catalog.parent / BROKEN_ITEMS[item_id][0])
    template = dict.fromkeys(rows[0], "")
    write_rows(catalog, rows + [{**template, "id": i, "image": BROKEN_ITEMS[i][0]} for i in ids])
    return {i: BROKEN_ITEMS[i][1] for i in ids}


def random_unit_vectors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 vectors of unit norm along the last axis, normally distributed directions."""
    v = rng.standard_normal(shape).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)
