"""A copy of a synthetic dataset with one more attribute, read from a catalog.csv column.

    python scripts/add_attribute.py --data data/synth --column category --out data/synth-category

For fine-tuning with ``python -m model.train --init`` (docs/RESULTS.md, "Fine-tuning with
--init"): ``model.synth`` records per image a nuisance that is no attribute of the dataset,
the garment ``category`` (straight, fitted, a_line, coat); this writes a dataset folder
whose attributes are the source's plus that column (values sorted by name), without touching
the source or copying images:

- ``attributes.json``: the source's list plus the new attribute (``"kind": "global"``);
- ``filenames_*.txt``: the source's images, by paths relative to the new folder;
- ``label_train.txt``: every training image also labelled for the new attribute;
- ``query_*.txt`` / ``candidate_*.txt``: the source's lines unchanged (so the old
  attributes are scored on exactly the source's queries and candidates), plus, for the new
  attribute, as many images as an old attribute has (drawn with ``--seed``), a fifth of
  them queries, as ``model.synth`` splits its own;
- ``boxes.jsonl`` (copied) and ``derived.json`` (what was done).

It then prints the new attribute's chance MAP on the test split: random embeddings ranked
for its actual queries and candidates, mean and standard deviation of 200 draws.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.training.metrics import mean_average_precision

SPLITS = ("train", "valid", "test")
QUERY_FRACTION = 0.2


def _read_column(data: Path, column: str) -> dict[str, str]:
    """image path (as in filenames_*.txt) -> the column's value."""
    with open(data / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0]:
        have = ", ".join(rows[0]) if rows else "no rows"
        raise ValueError(f"{data / 'catalog.csv'}: no column {column!r} ({have})")
    return {r["image"]: r[column] for r in rows}


def _new_triples(n_images: int, per_attr: int, values: list[int], seed: int, split: int,
                 ) -> tuple[list[str], list[str]]:
    """Query and candidate lines 'image attr value' for the new attribute (index filled in
    by the caller through ``values``' positions)."""
    rng = np.random.default_rng([seed, split, 104_729])
    ids = rng.permutation(n_images)[:per_attr]
    n_q = max(1, round(QUERY_FRACTION * len(ids)))
    return ([f"{i} {{a}} {values[i]}" for i in sorted(ids[:n_q])],
            [f"{i} {{a}} {values[i]}" for i in sorted(ids[n_q:])])


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def add_attribute(data: Path, out: Path, column: str, name: str, seed: int = 0) -> list[str]:
    """Write the dataset (see the module's docstring); returns the new attribute's values."""
    attrs = json.loads((data / "attributes.json").read_text())
    if any(a["name"] == name for a in attrs):
        raise ValueError(f"{data}: already has an attribute {name!r}")
    by_image = _read_column(data, column)
    values = sorted(set(by_image.values()))
    index = len(attrs)
    if out.exists() and any(out.iterdir()) and not (out / "derived.json").is_file():
        raise ValueError(f"{out} is not empty and was not written by this script")
    out.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(data, out))
    for code, split in enumerate(SPLITS):
        names = _lines(data / f"filenames_{split}.txt")
        (out / f"filenames_{split}.txt").write_text("".join(f"{rel / n}\n" for n in names))
        ids = [values.index(by_image[n]) for n in names]
        if split == "train":
            lines = [f"{ln} {index} {ids[int(ln.split()[0])]}"
                     for ln in _lines(data / "label_train.txt")]
            (out / "label_train.txt").write_text("".join(x + "\n" for x in lines))
            continue
        old = {k: _lines(data / f"{k}_{split}.txt") for k in ("query", "candidate")}
        per_attr = round((len(old["query"]) + len(old["candidate"])) / len(attrs))
        new = _new_triples(len(names), per_attr, ids, seed, code)
        for kind, extra in zip(("query", "candidate"), new, strict=True):
            lines = old[kind] + [x.format(a=index) for x in extra]
            (out / f"{kind}_{split}.txt").write_text("".join(x + "\n" for x in lines))
    attrs.append({"name": name, "n_values": len(values), "values": values, "kind": "global"})
    (out / "attributes.json").write_text(json.dumps(attrs, indent=2) + "\n")
    if (data / "boxes.jsonl").is_file():
        shutil.copyfile(data / "boxes.jsonl", out / "boxes.jsonl")
    (out / "derived.json").write_text(json.dumps(
        {"source": str(data), "column": column, "attribute": name, "values": values,
         "seed": seed}, indent=2) + "\n")
    return values


def chance_map(out: Path, attribute: int, draws: int = 200) -> tuple[float, float]:
    """Mean and standard deviation of the MAP (%) of random embeddings for ``attribute`` on
    the test split's own queries and candidates."""
    def triples(kind: str) -> np.ndarray:
        rows = np.array([[int(x) for x in ln.split()] for ln in _lines(out / f"{kind}_test.txt")])
        return rows[rows[:, 1] == attribute]
    q, c = triples("query"), triples("candidate")
    rng = np.random.default_rng(0)
    maps = [mean_average_precision(rng.normal(size=(len(q), 16)), q[:, 1], q[:, 2],
                                   rng.normal(size=(len(c), 16)), c[:, 1], c[:, 2]).overall
            for _ in range(draws)]
    return float(np.mean(maps)), float(np.std(maps))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a model.synth dataset folder")
    p.add_argument("--out", type=Path, required=True, help="the new dataset folder")
    p.add_argument("--column", default="category", help="catalog.csv column (default category)")
    p.add_argument("--name", help="the attribute's name (default: the column's)")
    p.add_argument("--seed", type=int, default=0, help="draw of the new query/candidate images")
    a = p.parse_args(argv)
    name = a.name or a.column
    try:
        values = add_attribute(a.data, a.out, a.column, name, a.seed)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n_old = len(json.loads((a.out / "attributes.json").read_text())) - 1
    mean, sd = chance_map(a.out, n_old)
    print(f"wrote {a.out}: attribute {name!r} ({len(values)} values: {', '.join(values)}); "
          f"chance MAP on test {mean:.1f}% (sd {sd:.1f}, 200 draws)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
