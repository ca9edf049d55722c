"""Convert the FashionAI attribute-challenge labels into the published layout (SPEC section 6).

    python -m model.fashionai_convert --csv LABELS.csv --images ROOT --out DIR [--seed 0]

The challenge CSV has rows ``image_path,attribute,label_string``: ``image_path`` relative to
ROOT (e.g. ``Images/skirt_length_labels/xxx.jpg``), ``attribute`` such as
``skirt_length_labels`` and a label string such as ``nnynnn`` whose single ``y`` marks the
value (``m``, "maybe", counts as not the value). Rows with no or several ``y``, a label of
the wrong length, an unknown attribute or a missing image are reported with their line
number and skipped. Images are split by a seeded shuffle into train/valid/test; in
valid/test each labelled (image, attribute) becomes a query (20%) or a candidate (80%),
per attribute, like the published 3,600 / 14,400 split.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.attributes import BUILTIN_ATTRIBUTES

FASHIONAI = list(BUILTIN_ATTRIBUTES["FashionAI"])
_INDEX = {a.name: i for i, a in enumerate(FASHIONAI)}
LINK_MODES = ("relative", "absolute", "copy", "symlink")


@dataclass
class Conversion:
    """Result of reading the label CSV: labels per image and the rejected rows."""

    labels: dict[str, dict[int, int]] = field(default_factory=dict)  # image path -> {a: v}
    problems: list[tuple[int, str]] = field(default_factory=list)    # (line, message)


def attribute_index(name: str) -> int | None:
    """Index in the FashionAI list of ``skirt_length_labels`` / ``skirt_length``."""
    key = name.strip().lower()
    key = key[: -len("_labels")] if key.endswith("_labels") else key
    return _INDEX.get(key)


def read_label_csv(csv_path: str | os.PathLike, images: str | os.PathLike | None = None
                   ) -> Conversion:
    """Parse the challenge CSV; with ``images``, rows whose image file is missing are skipped."""
    out = Conversion()
    seen: dict[tuple[str, int], int] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        for row in reader:
            line = reader.line_num
            if not row or not "".join(row).strip():
                continue
            row = [c.strip() for c in row]
            if len(row) < 3:
                out.problems.append((line, f"expected image_path,attribute,labels, got {row}"))
                continue
            path, attr, label = row[0], row[1], row[2].lower()
            a = attribute_index(attr)
            if a is None:
                if line == 1 and not set(label) <= set("ynm"):
                    continue  # a header row
                out.problems.append((line, f"unknown attribute {attr!r}"))
                continue
            n_values = FASHIONAI[a].n_values
            if not label or not set(label) <= set("ynm"):
                out.problems.append((line, f"label {row[2]!r} is not made of y/n/m"))
            elif len(label) != n_values:
                out.problems.append((line, f"label {row[2]!r} has {len(label)} values, "
                                     f"{FASHIONAI[a].name} has {n_values}"))
            elif label.count("y") != 1:
                what = "no" if label.count("y") == 0 else "several"
                out.problems.append((line, f"label {row[2]!r} marks {what} value with 'y'"))
            elif (path, a) in seen:
                out.problems.append((line, f"duplicate label for {path} {FASHIONAI[a].name} "
                                     f"(first on line {seen[(path, a)]})"))
            elif images is not None and not (Path(images) / path).is_file():
                out.problems.append((line, f"image not found: {Path(images) / path}"))
            else:
                seen[(path, a)] = line
                out.labels.setdefault(path, {})[a] = label.index("y")
    return out


def split_images(paths: Sequence[str], seed: int, valid_frac: float, test_frac: float
                 ) -> dict[str, list[str]]:
    """Seeded split of the images; each split keeps the sorted path order."""
    order = sorted(paths)
    perm = np.random.default_rng(seed).permutation(len(order))
    n_test, n_valid = round(test_frac * len(order)), round(valid_frac * len(order))
    parts = {"test": perm[:n_test], "valid": perm[n_test:n_test + n_valid],
             "train": perm[n_test + n_valid:]}
    return {k: [order[i] for i in sorted(v)] for k, v in parts.items()}


def _query_split(entries: list[tuple[int, int, int]], rng: np.random.Generator,
                 query_frac: float) -> tuple[list, list]:
    queries, candidates = [], []
    for a in range(len(FASHIONAI)):
        group = [e for e in entries if e[1] == a]
        order = rng.permutation(len(group))
        n_q = max(1, round(query_frac * len(group))) if len(group) >= 2 else 0
        queries += [group[i] for i in order[:n_q]]
        candidates += [group[i] for i in order[n_q:]]
    return sorted(queries), sorted(candidates)


def _place_image(src: Path, rel: str, out: Path, link: str) -> str:
    if link == "absolute":
        return str(src.resolve())
    if link == "relative":
        return os.path.relpath(src.resolve(), out.resolve())
    dest = out / "images" / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    if link == "copy":
        shutil.copy2(src, dest)
    else:
        dest.symlink_to(src.resolve())
    return (Path("images") / rel).as_posix()


def convert(csv_path: str | os.PathLike, images: str | os.PathLike, out_dir: str | os.PathLike,
            seed: int = 0, valid_frac: float = 0.1, test_frac: float = 0.1,
            query_frac: float = 0.2, link: str = "relative", check_images: bool = True) -> dict:
    """Write the published layout for a FashionAI label CSV; returns a summary dict."""
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    if not 0 <= valid_frac + test_frac < 1:
        raise ValueError("valid_frac + test_frac must be in [0, 1)")
    images, out = Path(images), Path(out_dir)
    conv = read_label_csv(csv_path, images if check_images else None)
    if not conv.labels:
        raise ValueError(f"{csv_path}: no usable label rows")
    out.mkdir(parents=True, exist_ok=True)
    splits = split_images(list(conv.labels), seed, valid_frac, test_frac)
    rng = np.random.default_rng([seed, 1])
    counts: dict[str, dict[str, int]] = {}
    catalog: list[list[int | str]] = []          # catalog.csv rows: id, image, split, values
    for split in ("train", "valid", "test"):
        paths = splits[split]
        names = [_place_image(images / p, p, out, link) for p in paths]
        (out / f"filenames_{split}.txt").write_text("".join(n + "\n" for n in names))
        entries = [(i, a, v) for i, p in enumerate(paths)
                   for a, v in sorted(conv.labels[p].items())]
        if split == "train":
            lines = [f"{i} " + " ".join(f"{a} {v}" for a, v in sorted(conv.labels[p].items()))
                     for i, p in enumerate(paths)]
            (out / "label_train.txt").write_text("".join(x + "\n" for x in lines))
            counts[split] = {"images": len(paths), "labels": len(entries)}
        else:
            queries, candidates = _query_split(entries, rng, query_frac)
            for kind, rows in (("query", queries), ("candidate", candidates)):
                (out / f"{kind}_{split}.txt").write_text(
                    "".join(f"{i} {a} {v}\n" for i, a, v in rows))
            counts[split] = {"images": len(paths), "queries": len(queries),
                             "candidates": len(candidates)}
        for i, (p, name) in enumerate(zip(paths, names, strict=True)):
            values = conv.labels[p]
            catalog.append([f"{split}-{i:06d}", name, split,
                            *(values.get(a, "") for a in range(len(FASHIONAI)))])
    (out / "attributes.json").write_text(json.dumps(
        [{"name": a.name, "n_values": a.n_values} for a in FASHIONAI], indent=2) + "\n")
    with open(out / "catalog.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "split", *(a.name for a in FASHIONAI)])
        writer.writerows(catalog)
    report = "".join(f"{csv_path}:{line}: skipped: {msg}\n" for line, msg in conv.problems)
    (out / "conversion_report.txt").write_text(report)
    return {"images": len(conv.labels), "skipped_rows": len(conv.problems), "splits": counts,
            "problems": conv.problems}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.fashionai_convert",
                                description=__doc__.split("\n")[0])
    p.add_argument("--csv", required=True, help="FashionAI label CSV")
    p.add_argument("--images", required=True, help="folder the CSV image paths are relative to")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--valid-frac", type=float, default=0.1)
    p.add_argument("--test-frac", type=float, default=0.1)
    p.add_argument("--query-frac", type=float, default=0.2)
    p.add_argument("--link", choices=LINK_MODES, default="relative",
                   help="how filenames_*.txt refer to the images (default: relative paths)")
    p.add_argument("--no-check-images", action="store_true",
                   help="do not skip rows whose image file is missing")
    a = p.parse_args(argv)
    try:
        s = convert(a.csv, a.images, a.out, seed=a.seed, valid_frac=a.valid_frac,
                    test_frac=a.test_frac, query_frac=a.query_frac, link=a.link,
                    check_images=not a.no_check_images)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line, msg in s["problems"][:20]:
        print(f"{a.csv}:{line}: skipped: {msg}", file=sys.stderr)
    if len(s["problems"]) > 20:
        print(f"... {len(s['problems']) - 20} more in {a.out}/conversion_report.txt",
              file=sys.stderr)
    print(f"{s['images']} images, {s['skipped_rows']} rows skipped; "
          + ", ".join(f"{k}: {v}" for k, v in s["splits"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
