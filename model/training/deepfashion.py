"""Read the DeepFashion Category and Attribute Prediction Benchmark into the published layout.

    python -m model.deepfashion_convert --root ROOT --out DIR [--images DIR] [--multi skip|first]

ROOT is the benchmark folder as downloaded (``Category and Attribute Prediction Benchmark``):

- ``Anno/list_attr_cloth.txt`` (``Anno_coarse/`` in the later release): line 1 the number of
  attributes (1000), line 2 the header ``attribute_name attribute_type``, then one attribute a
  line: its name (it may hold spaces) and its type, 1 texture, 2 fabric, 3 shape, 4 part, 5 style.
- ``Anno/list_attr_img.txt``: the number of images, the header ``image_name attribute_labels``,
  then an image path (``img/<item>/img_00000001.jpg``) and one label per attribute, in the
  order of list_attr_cloth.txt: ``1`` positive, ``-1`` negative, ``0`` unknown (the fine subset,
  ``Anno_fine/``, writes ``0``/``1``). Only ``1`` counts as positive.
- ``Eval/list_eval_partition.txt``: the number of images, the header ``image_name
  evaluation_status``, then an image path and ``train``, ``val`` or ``test`` (val -> valid).

Each type becomes one attribute of the layout (texture, fabric, shape, part, style) whose values
are the attributes of that type in list_attr_cloth.txt order: 156, 218, 180, 216 and 230 values,
the published counts (Maryeon/asenpp config/DeepFashion/DeepFashion.yaml; Maryeon/asen
src/make_triplet_deepfashion.py maps a value id to the attributes of its type the same way).
One value per type: an image is labelled for a type when exactly one of that type's attributes
is positive; with none it is unlabelled for that type; with several it is unlabelled too
(``--multi skip``, the default) or takes the first of them in list order (``--multi first``).
The split is the official partition. The published split files do not state their rule; README
section "DeepFashion" says what is and is not confirmed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model.attributes import BUILTIN_ATTRIBUTES
from model.training.dataset import (
    AttributeColumn,
    DatasetError,
    LabelledImage,
    add_layout_arguments,
    build_dataset,
)

#: The benchmark's attribute types (list_attr_cloth.txt column 2), named as the published set.
TYPE_NAMES: dict[int, str] = {
    i + 1: a.name for i, a in enumerate(BUILTIN_ATTRIBUTES["DeepFashion"])}
PARTITIONS = {"train": "train", "val": "valid", "test": "test"}
MULTI_RULES = ("skip", "first")
_LABELS = frozenset({"1", "-1", "0"})


class DeepFashionError(ValueError):
    """An annotation file that does not follow the official format (message names file:line)."""


@dataclass(frozen=True)
class ClothAttribute:
    """One line of list_attr_cloth.txt."""

    name: str
    type_id: int


@dataclass(frozen=True)
class TypeValues:
    """One attribute type as an attribute of the layout: its name and its values, in order."""

    name: str
    type_id: int
    values: tuple[str, ...]
    columns: tuple[int, ...]          # the list_attr_img.txt column of each value


@dataclass
class DeepFashionInput:
    """What the reader hands the builder: records, the attribute columns and its own notes."""

    records: list[LabelledImage]
    attributes: list[AttributeColumn]
    problems: list[str] = field(default_factory=list)   # rows/labels left out (the report's)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, Counter[str]] = field(default_factory=dict)  # type -> outcome -> images
    multi: str = "skip"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    yield number, line
    except OSError as e:
        raise DeepFashionError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise DeepFashionError(f"{path}: not a text file") from None


def _entries(path: Path, header: str) -> Iterator[tuple[int, list[str]]]:
    """The rows of an official list file, after its count and header lines; checks the count."""
    rows = _lines(path)
    first = next(rows, None)
    if first is None:
        raise DeepFashionError(f"{path}: empty file")
    try:
        declared = int(first[1].strip())
    except ValueError:
        raise DeepFashionError(f"{path}:{first[0]}: expected the number of entries, "
                               f"got {first[1].strip()[:60]!r}") from None
    second = next(rows, None)
    if second is None or second[1].split()[0] != header:
        got = "nothing" if second is None else repr(second[1].strip()[:60])
        raise DeepFashionError(f"{path}:{first[0] + 1}: expected the header line "
                               f"'{header} ...', got {got}")
    n = 0
    for number, line in rows:
        n += 1
        yield number, line.split()
    if n != declared:
        raise DeepFashionError(f"{path}: line 1 declares {declared} entries, the file has {n}")


def read_attribute_list(path: str | os.PathLike) -> list[ClothAttribute]:
    """list_attr_cloth.txt: the attributes with their type, in file (= label column) order."""
    out: list[ClothAttribute] = []
    for number, parts in _entries(Path(path), "attribute_name"):
        if len(parts) < 2 or not parts[-1].isdigit():
            raise DeepFashionError(f"{path}:{number}: expected '<attribute name> <type 1-5>', "
                                   f"got {' '.join(parts)[:60]!r}")
        out.append(ClothAttribute(" ".join(parts[:-1]), int(parts[-1])))
    if not out:
        raise DeepFashionError(f"{path}: no attributes")
    return out


def read_attribute_matrix(path: str | os.PathLike, n_attributes: int
                          ) -> Iterator[tuple[int, str, tuple[int, ...]]]:
    """list_attr_img.txt, streamed: (line, image path, the columns whose label is 1)."""
    for number, parts in _entries(Path(path), "image_name"):
        labels = parts[1:]
        if len(labels) != n_attributes:
            raise DeepFashionError(f"{path}:{number}: {len(labels)} labels for {parts[0]}, "
                                   f"list_attr_cloth.txt has {n_attributes} attributes")
        if not _LABELS.issuperset(labels):
            bad = next(t for t in labels if t not in _LABELS)
            raise DeepFashionError(f"{path}:{number}: label {bad!r} is not 1, -1 or 0")
        yield number, parts[0], tuple(i for i, t in enumerate(labels) if t == "1")


def read_partition(path: str | os.PathLike) -> dict[str, str]:
    """list_eval_partition.txt: image path -> "train" / "valid" / "test" (its val = valid)."""
    out: dict[str, str] = {}
    for number, parts in _entries(Path(path), "image_name"):
        if len(parts) != 2:
            raise DeepFashionError(f"{path}:{number}: expected '<image name> <train|val|test>', "
                                   f"got {' '.join(parts)[:80]!r}")
        status = PARTITIONS.get(parts[1].lower())
        if status is None:
            raise DeepFashionError(f"{path}:{number}: unknown evaluation status {parts[1]!r} "
                                   "(expected train, val or test)")
        if out.setdefault(parts[0], status) != status:
            raise DeepFashionError(f"{path}:{number}: {parts[0]} is listed twice, "
                                   f"in {out[parts[0]]} and {status}")
    return out


def read_split_lists(folder: str | os.PathLike) -> dict[str, str]:
    """The fine subset's partition: ``train.txt``, ``val.txt``, ``test.txt`` (one path a line)."""
    out: dict[str, str] = {}
    for stem, split in (("train", "train"), ("val", "valid"), ("test", "test")):
        for _, line in _lines(Path(folder) / f"{stem}.txt"):
            out[line.strip()] = split
    return out


def type_values(attributes: Sequence[ClothAttribute],
                type_names: Mapping[int, str] | None = None) -> list[TypeValues]:
    """Group the attributes by type (type id order); each type's values keep the file order.

    Names are compared as the builder compares value names (trimmed, spaces collapsed, case
    folded); a name repeated within a type gets `` (2)``, `` (3)``... so every value id stays."""
    names = dict(TYPE_NAMES if type_names is None else type_names)
    unknown = sorted({a.type_id for a in attributes} - names.keys())
    if unknown:
        raise DeepFashionError(
            f"attribute type(s) {unknown} have no name; the benchmark's types are "
            + ", ".join(f"{k} {v}" for k, v in sorted(names.items()))
            + " (name others with --type-names)")
    out = []
    for type_id in sorted({a.type_id for a in attributes}):
        values: list[str] = []
        seen: Counter[str] = Counter()
        columns = tuple(i for i, a in enumerate(attributes) if a.type_id == type_id)
        for i in columns:
            name = " ".join(attributes[i].name.split())
            seen[name.casefold()] += 1
            values.append(name if seen[name.casefold()] == 1
                          else f"{name} ({seen[name.casefold()]})")
        out.append(TypeValues(names[type_id], type_id, tuple(values), columns))
    return out


def column_lookup(types: Sequence[TypeValues]) -> dict[int, tuple[int, int]]:
    """list_attr_img.txt column -> (index of its type in ``types``, value id within the type)."""
    return {c: (t, k) for t, tv in enumerate(types) for k, c in enumerate(tv.columns)}


def one_value_per_type(positives: Sequence[int], types: Sequence[TypeValues],
                       multi: str = "skip", lookup: Mapping[int, tuple[int, int]] | None = None
                       ) -> tuple[dict[str, str], dict[str, str]]:
    """The labels of one image: type name -> value name, and the outcome for every type
    ("labelled", "none" or "several"; with ``multi="first"`` several positives still label).
    ``lookup`` is ``column_lookup(types)``, computed here when not given."""
    lookup = column_lookup(types) if lookup is None else lookup
    hits: dict[int, list[int]] = {}
    for column in sorted(positives):
        t, k = lookup[column]
        hits.setdefault(t, []).append(k)
    labels: dict[str, str] = {}
    outcome: dict[str, str] = {}
    for t, tv in enumerate(types):
        mine = hits.get(t, [])
        outcome[tv.name] = "none" if not mine else "labelled" if len(mine) == 1 else "several"
        if len(mine) == 1 or (mine and multi == "first"):
            labels[tv.name] = tv.values[mine[0]]
    return labels, outcome


def find_annotations(root: str | os.PathLike) -> tuple[Path, Path]:
    """(annotation folder, partition file) of a benchmark folder: Anno/ or Anno_coarse/."""
    root = Path(root)
    for name in ("Anno", "Anno_coarse"):
        if (root / name / "list_attr_img.txt").is_file():
            return root / name, root / "Eval" / "list_eval_partition.txt"
    if (root / "Anno_fine" / "list_attr_img.txt").is_file():
        raise DeepFashionError(
            f"{root} has only Anno_fine/ (the 26-attribute fine subset), not the 1000-attribute "
            "annotations the paper uses; pass --anno ROOT/Anno_fine --type-names ... to read it")
    raise DeepFashionError(f"{root}: no Anno/list_attr_img.txt or Anno_coarse/list_attr_img.txt "
                           "(expected the Category and Attribute Prediction Benchmark folder)")


def default_images(root: Path) -> Path:
    """Where the ``img/...`` paths resolve: ROOT, or ROOT/Img when img.zip was unpacked there."""
    if not (root / "img").is_dir() and (root / "Img" / "img").is_dir():
        return root / "Img"
    return root


def _record(path: str, labels: dict[str, str], split: str, images: Path) -> LabelledImage:
    return LabelledImage(image=str(images / path), labels=labels, id=path, split=split)


def read_deepfashion(anno: str | os.PathLike, partition: Mapping[str, str],
                     images: str | os.PathLike, *, multi: str = "skip",
                     type_names: Mapping[int, str] | None = None) -> DeepFashionInput:
    """Records for the builder from an annotation folder and an image -> split mapping."""
    if multi not in MULTI_RULES:
        raise ValueError(f"multi must be one of {MULTI_RULES}, got {multi!r}")
    anno, images = Path(anno), Path(images)
    cloth = read_attribute_list(anno / "list_attr_cloth.txt")
    types = type_values(cloth, type_names)
    out = DeepFashionInput([], [AttributeColumn(t.name, values=t.values) for t in types],
                           warnings=published_check(types), multi=multi)
    out.counts = {t.name: Counter() for t in types}
    lookup = column_lookup(types)
    seen: set[str] = set()
    unsplit: list[str] = []
    matrix = anno / "list_attr_img.txt"
    for number, path, positives in read_attribute_matrix(matrix, len(cloth)):
        if path in seen:
            out.problems.append(f"{matrix}:{number}: {path} is listed twice")
            continue
        seen.add(path)
        if path not in partition:
            unsplit.append(path)
            continue
        labels, outcome = one_value_per_type(positives, types, multi, lookup)
        for name, what in outcome.items():
            out.counts[name][what] += 1
        if labels:
            out.records.append(_record(path, labels, partition[path], images))
    if unsplit:
        out.problems.append(f"{matrix}: {len(unsplit)} images missing from the partition "
                            f"file (first: {unsplit[0]})")
    if multi == "skip":
        out.problems += [f"{name}: {c['several']} images with several positive {name} attributes "
                         f"left unlabelled for {name}" for name, c in out.counts.items()
                         if c["several"]]
    return out


def published_check(types: Sequence[TypeValues]) -> list[str]:
    """A note when the value counts differ from the published set's (156, 218, 180, 216, 230)."""
    published = {a.name: a.n_values for a in BUILTIN_ATTRIBUTES["DeepFashion"]}
    got = {t.name: len(t.values) for t in types}
    if got == published or not set(got) <= set(published):
        return []
    return ["list_attr_cloth.txt: values per type " + ", ".join(f"{k} {v}" for k, v in got.items())
            + " differ from the published " + ", ".join(f"{k} {v}" for k, v in published.items())]


def rule_summary(data: DeepFashionInput) -> str:
    """One line per type: how many images had one, several or no positive attribute of it."""
    rule = "left unlabelled" if data.multi == "skip" else "labelled with the first"
    return "\n".join(
        f"{name}: {c['labelled']} images with one positive attribute, {c['several']} with "
        f"several ({rule}), {c['none']} with none" for name, c in data.counts.items())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.deepfashion_convert",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--root", required=True, help="the Category and Attribute Prediction Benchmark")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--images", help="folder the img/... paths are relative to "
                   "(default: ROOT, or ROOT/Img when img.zip was unpacked there)")
    p.add_argument("--anno", help="annotation folder (default: ROOT/Anno or ROOT/Anno_coarse)")
    p.add_argument("--partition", help="partition file (default: ROOT/Eval/list_eval_partition.txt;"
                   " for Anno_fine, its train.txt/val.txt/test.txt)")
    p.add_argument("--multi", choices=MULTI_RULES, default="skip",
                   help="an image with several positive attributes of a type: leave it unlabelled "
                   "for that type (skip, default) or take the first in list order")
    p.add_argument("--type-names", help="names of types 1,2,... (default: "
                   + ",".join(TYPE_NAMES.values()) + ")")
    add_layout_arguments(p, min_per_value=1, fractions=False, check_help="do not decode every "
                         "image (faster; unreadable images are not rejected)")
    a = p.parse_args(argv)
    try:
        report = convert(a)
    except (DeepFashionError, DatasetError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


def convert(a: argparse.Namespace) -> str:
    """Run the reader and the builder for the parsed command line; returns the summary text
    (the reader's warnings go to stderr)."""
    root = Path(a.root)
    if not root.is_dir():
        raise DeepFashionError(f"{root}: not a folder")
    anno, partition_file = (Path(a.anno), None) if a.anno else find_annotations(root)
    if a.partition:
        partition_file = Path(a.partition)
    elif partition_file is None:
        fine = (anno / "train.txt").is_file()
        partition_file = anno if fine else root / "Eval" / "list_eval_partition.txt"
    partition = (read_split_lists(partition_file) if partition_file.is_dir()
                 else read_partition(partition_file))
    names = None
    if a.type_names:
        names = {i + 1: n.strip() for i, n in enumerate(a.type_names.split(",")) if n.strip()}
    data = read_deepfashion(anno, partition, Path(a.images) if a.images else default_images(root),
                            multi=a.multi, type_names=names)
    for warning in data.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    report = build_dataset(data.records, data.attributes, a.out, seed=a.seed,
                           min_per_value=a.min_per_value, query_frac=a.query_frac, link=a.link,
                           check_images=not a.no_check_images, problems=data.problems)
    return f"one value per type (--multi {a.multi}):\n{rule_summary(data)}\n{report.summary()}"
