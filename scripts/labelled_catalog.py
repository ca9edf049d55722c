"""A labelled catalog as a shop would have it, made from a synthetic dataset's ``catalog.csv``.

    python scripts/labelled_catalog.py --synth data/synth-seed21 --out data/labelled-seed21 \\
        [--seed 0] [--blank 0.3] [--rare pattern=checks] [--rare-count 12] [--broken 5] \\
        [--per-product 3]

Every image of the synthetic dataset (all its splits) becomes a catalog row (``id``, ``image``
relative to the new catalog, ``product_id``, ``category`` and one column per attribute), with:
a fraction ``--blank`` of the (image, attribute) labels blanked at random; the value ``--rare``
kept on only ``--rare-count`` images (blanked elsewhere), so that it falls under
``model.dataset``'s ``--min-per-value`` 20; ``--broken`` extra rows whose image is broken
(a truncated JPEG, an empty file, a text file, a missing file, ...) in ``OUT/broken/``; and
``product_id`` shared by every ``--per-product`` consecutive rows. Seeded: the same arguments
write the same catalog. The input for the measurement of docs/RESULTS.md ("Your own
labelled catalog").
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np


def _broken_files(src: Path, folder: Path, n: int) -> list[str]:
    """``n`` broken image files in ``folder`` (the last names a file that is not there)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    makers = [("truncated.jpg", data[: len(data) // 3]), ("empty.jpg", b""),
              ("notes.jpg", b"this is not an image\n"), ("header-only.jpg", data[:64]),
              ("garbage.png", bytes(range(256)) * 4)]
    names = []
    for i in range(n):
        name, content = makers[i % len(makers)]
        name = f"{i:02d}-{name}"
        if i == n - 1:
            names.append(f"{i:02d}-missing.jpg")      # listed, never written
            continue
        (folder / name).write_bytes(content)
        names.append(name)
    return names


def make_catalog(synth: Path, out: Path, *, seed: int = 0, blank: float = 0.3,
                 rare: tuple[str, str] | None = ("pattern", "checks"), rare_count: int = 12,
                 broken: int = 5, per_product: int = 3) -> dict[str, int]:
    """Write ``out/catalog.csv`` (see the module's docstring); returns counts."""
    with open(synth / "catalog.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{synth}/catalog.csv has no rows")
    skip = {"id", "image", "split", "category"}
    attrs = [c for c in rows[0] if c not in skip]
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(synth.resolve(), out.resolve())
    mask = rng.random((len(rows), len(attrs))) < blank
    if rare is not None:
        a = attrs.index(rare[0])
        holders = [i for i, r in enumerate(rows) if r[rare[0]] == rare[1] and not mask[i, a]]
        for i in rng.permutation(holders)[rare_count:]:
            mask[i, a] = True
    lines = []
    for i, r in enumerate(rows):
        lines.append({"id": r["id"], "image": f"{rel}/{r['image']}",
                      "product_id": f"p{i // per_product:05d}", "category": r["category"],
                      **{c: ("" if mask[i, k] else r[c]) for k, c in enumerate(attrs)}})
    for k, name in enumerate(_broken_files(synth / rows[0]["image"], out / "broken", broken)):
        lines.append({**lines[k], "id": f"broken-{k:02d}", "image": f"broken/{name}",
                      "product_id": f"broken-{k:02d}"})
    with open(out / "catalog.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "product_id", "category", *attrs])
        writer.writeheader()
        writer.writerows(lines)
    return {"rows": len(lines), "blanked": int(mask.sum()), "labels": int(mask.size),
            "broken": broken}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--synth", required=True, type=Path, help="a `python -m model.synth` folder")
    p.add_argument("--out", required=True, type=Path, help="folder of the new catalog.csv")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blank", type=float, default=0.3, help="fraction of labels blanked")
    p.add_argument("--rare", default="pattern=checks", help="ATTRIBUTE=VALUE made rare ('' none)")
    p.add_argument("--rare-count", type=int, default=12, help="images keeping the rare value")
    p.add_argument("--broken", type=int, default=5, help="extra rows with broken images")
    p.add_argument("--per-product", type=int, default=3, help="images per product_id")
    a = p.parse_args(argv)
    attr, _, value = a.rare.partition("=")
    try:
        counts = make_catalog(a.synth, a.out, seed=a.seed, blank=a.blank,
                              rare=(attr, value) if a.rare else None, rare_count=a.rare_count,
                              broken=a.broken, per_product=a.per_product)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out / 'catalog.csv'}: {counts['rows']} rows, {counts['blanked']} of "
          f"{counts['labels']} labels blanked, {counts['broken']} broken images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
