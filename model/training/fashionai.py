"""Convert the FashionAI attribute-challenge labels into the published layout (SPEC section 6).

    python -m model.fashionai_convert --csv LABELS.csv --images ROOT --out DIR [--seed 0]

The challenge CSV has rows ``image_path,attribute,label_string``: ``image_path`` relative to
ROOT (e.g. ``Images/skirt_length_labels/xxx.jpg``), ``attribute`` such as
``skirt_length_labels`` and a label string such as ``nnynnn`` whose single ``y`` marks the
value (``m``, "maybe", counts as not the value). Rows with no or several ``y``, a label of
the wrong length, an unknown attribute or a missing image are reported with their line
number and skipped. The images and their labels then go through the dataset builder
(``model.training.dataset``, the one place where splits are made): a seeded, stratified split
into train/valid/test, in valid/test each labelled (image, attribute) a query (20%) or a
candidate (80%) per value, like the published 3,600 / 14,400 split, images that cannot be
decoded in ``rejected.csv`` and the counts in ``dataset_report.json``. ``attributes.json``
lists the FashionAI attributes the CSV labels (in the published order, each with its
published number of values).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model.attributes import BUILTIN_ATTRIBUTES
from model.training.dataset import (
    REPORT,
    AttributeColumn,
    DatasetError,
    DatasetReport,
    LabelledImage,
    add_layout_arguments,
    build_dataset,
)

FASHIONAI = list(BUILTIN_ATTRIBUTES["FashionAI"])
_INDEX = {a.name: i for i, a in enumerate(FASHIONAI)}


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


def records(conv: Conversion, images: str | os.PathLike
            ) -> tuple[list[LabelledImage], list[AttributeColumn]]:
    """The builder's input: one record per image (its path under ``images``) and the FashionAI
    attributes the CSV labels, in the published order, each with its fixed value ids
    (value names ``"0"``, ``"1"``, ...: the position of the ``y``)."""
    present = sorted({a for labs in conv.labels.values() for a in labs})
    attrs = [AttributeColumn(FASHIONAI[a].name,
                             values=tuple(str(v) for v in range(FASHIONAI[a].n_values)))
             for a in present]
    recs = [LabelledImage(str(Path(images) / path),
                          {FASHIONAI[a].name: str(v) for a, v in sorted(labs.items())}, id=path)
            for path, labs in conv.labels.items()]
    return recs, attrs


def convert(csv_path: str | os.PathLike, images: str | os.PathLike, out_dir: str | os.PathLike,
            seed: int = 0, valid_frac: float = 0.1, test_frac: float = 0.1,
            query_frac: float = 0.2, link: str = "relative", check_images: bool = True,
            min_per_value: int = 1) -> DatasetReport:
    """Write the published layout for a FashionAI label CSV through the dataset builder
    (:func:`model.training.dataset.build_dataset`: the split, the files, the report); the
    CSV rows it skipped are in ``conversion_report.txt`` and the report's ``problems``."""
    conv = read_label_csv(csv_path, images if check_images else None)
    if not conv.labels:
        raise DatasetError(f"{csv_path}: no usable label rows")
    recs, attrs = records(conv, images)
    problems = [f"{csv_path}:{line}: skipped: {msg}" for line, msg in conv.problems]
    report = build_dataset(recs, attrs, out_dir, seed=seed, min_per_value=min_per_value,
                           valid_frac=valid_frac, test_frac=test_frac, query_frac=query_frac,
                           link=link, check_images=check_images, problems=problems)
    (Path(out_dir) / "conversion_report.txt").write_text("".join(p + "\n" for p in problems))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.fashionai_convert",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--csv", required=True, help="FashionAI label CSV")
    p.add_argument("--images", required=True, help="folder the CSV image paths are relative to")
    p.add_argument("--out", required=True, help="output dataset folder")
    add_layout_arguments(p, min_per_value=1, check_help="neither skip rows whose image file "
                         "is missing nor decode the images")
    a = p.parse_args(argv)
    try:
        report = convert(a.csv, a.images, a.out, seed=a.seed, valid_frac=a.valid_frac,
                         test_frac=a.test_frac, query_frac=a.query_frac, link=a.link,
                         check_images=not a.no_check_images, min_per_value=a.min_per_value)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"skipped CSV rows: {a.out}/conversion_report.txt; report: {a.out}/{REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
