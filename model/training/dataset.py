"""Build the published layout (SPEC section 6) from labelled images: ``python -m model.dataset``.

    python -m model.dataset --catalog CATALOG --attributes A,B=column,... --out DIR
                            [--group-by COL] [--seed 0] [--min-per-value 20]

The catalog is one the indexer reads (CSV or JSON Lines with ``id`` and ``image``); each
attribute is a column (``collar=collar_type`` names the attribute ``collar`` and reads the
column ``collar_type``). A value is trimmed and case-folded; an empty cell means "not labelled
for this attribute". Readers of other label formats (the FashionAI CSV,
``model.training.fashionai``) build :class:`LabelledImage` records and call
:func:`build_dataset`: this module is the one place where splits are made.

The rules:

- images are split train / valid / test by a seeded shuffle of *groups* (``--group-by
  product_id``: every photo of a product lands in the same split), stratified per
  (attribute, value) so that every value has images, and queries, in valid and test;
- in valid and test each labelled (image, attribute) is a query (``query_frac``, 20%) or a
  candidate, per value, as the FashionAI split (3,600 / 14,400);
- a value seen on fewer than ``min_per_value`` images is dropped from its attribute (listed in
  the report); an attribute left with fewer than two values is refused (:class:`DatasetError`);
- an image that is missing or cannot be decoded (the indexer's rules, :mod:`model.rejected`)
  is skipped and listed in ``rejected.csv``; the layout refers to the images where they are
  (``link="relative"``) unless asked to copy or symlink them.

Written: the layout files, ``attributes.json`` (``[{"name", "n_values", "values"}]``),
``catalog.csv`` (``id,image,split,<attributes>``: the dataset as a catalog, for the indexer),
``rejected.csv`` and ``dataset_report.json`` (:class:`DatasetReport`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from model.catalog import CatalogError, CatalogItem, load_catalog
from model.osutil import available_cpus
from model.rejected import Reject, image_reject, write_rejected

SPLITS = ("train", "valid", "test")
LINK_MODES = ("relative", "absolute", "copy", "symlink")
REPORT = "dataset_report.json"
PARALLEL_CHECK = 2000    # images per process when checking many
Label = tuple[int, int]          # (attribute index, value id)


class DatasetError(ValueError):
    """The input cannot make a dataset; the message says why and what to change."""


@dataclass(frozen=True)
class LabelledImage:
    """One image and its labels, as a reader hands it to :func:`build_dataset`.

    ``labels`` maps an attribute name to a value name ("" or a missing key: not labelled).
    Images with the same ``group`` never land in two splits (None: the image is its own group).
    ``id`` names the image in the report and ``catalog.csv``. ``split`` ("train", "valid" or
    "test": an official partition) puts the image there, whatever its group and the fractions
    (which then apply to the images without one)."""

    image: str
    labels: Mapping[str, str]
    group: str | None = None
    id: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class AttributeColumn:
    """An attribute of the dataset: its name, the catalog column it is read from (default: the
    name) and, for a fixed list of values (FashionAI, DeepFashion), the value names in id order.
    """

    name: str
    column: str | None = None
    values: tuple[str, ...] | None = None

    @property
    def source(self) -> str:
        return self.column or self.name

    @classmethod
    def parse(cls, spec: str) -> AttributeColumn:
        """``neckline`` or ``collar=collar_type`` (attribute ``collar`` from that column)."""
        name, _, column = (p.strip() for p in spec.partition("="))
        if not name or ("=" in spec and not column):
            raise DatasetError(f"bad attribute {spec!r}: expected NAME or NAME=COLUMN")
        return cls(name, column or None)


def parse_attributes(text: str) -> list[AttributeColumn]:
    """``--attributes neckline,sleeve_length,collar=collar_type`` into columns."""
    attrs = [AttributeColumn.parse(s) for s in text.split(",") if s.strip()]
    if not attrs:
        raise DatasetError("--attributes names no attribute")
    return attrs


def normalise_value(value: object) -> str:
    """A label as the builder compares it: trimmed and case-folded ("" = not labelled)."""
    return "" if value is None else str(value).strip().casefold()


@dataclass
class DroppedValue:
    """A value left out of its attribute, with how many images carried it."""

    attribute: str
    value: str
    images: int
    reason: str


@dataclass
class SplitCounts:
    """Images, groups and labels of one split (queries/candidates: valid and test)."""

    images: int = 0
    groups: int = 0
    labels: int = 0
    queries: int = 0
    candidates: int = 0


@dataclass
class AttributeCounts:
    """One attribute of the dataset: its values and, per value, images per split."""

    name: str
    values: list[str]
    images: dict[str, dict[str, int]] = field(default_factory=dict)   # value -> split -> n
    queries: dict[str, dict[str, int]] = field(default_factory=dict)  # value -> split -> n


@dataclass
class DatasetReport:
    """What :func:`build_dataset` wrote, and everything it left out and why."""

    out: str
    records: int
    splits: dict[str, SplitCounts]
    attributes: list[AttributeCounts]
    dropped_values: list[DroppedValue] = field(default_factory=list)
    rejected: list[Reject] = field(default_factory=list)
    unlabelled: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())

    def to_dict(self) -> dict[str, object]:
        """The report as ``dataset_report.json`` holds it."""
        return {"out": self.out, "records": self.records, "images": self.images,
                "splits": {k: asdict(v) for k, v in self.splits.items()},
                "attributes": [asdict(a) for a in self.attributes],
                "dropped_values": [asdict(d) for d in self.dropped_values],
                "rejected": [{"path": r.path, "id": r.id, "reason": r.reason, "detail": r.detail}
                             for r in self.rejected],
                "unlabelled": self.unlabelled, "problems": self.problems,
                "warnings": self.warnings}

    def summary(self, max_lines: int = 20) -> str:
        """A few lines for a terminal: counts, the table per value, what was left out."""
        sp = self.splits
        lines = [f"{self.records} records -> {self.images} images in {self.out} "
                 + ", ".join(f"{k} {v.images} ({v.groups} groups)" for k, v in sp.items())
                 + f"; {len(self.rejected)} rejected, {self.unlabelled} without labels"]
        lines.append("images per value train/valid/test (test queries):")
        for a in self.attributes:
            shown = list(a.images.items())
            lines.append(f"  {a.name}: " + ", ".join(
                f"{v} {c.get('train', 0)}/{c.get('valid', 0)}/{c.get('test', 0)}"
                f" ({a.queries.get(v, {}).get('test', 0)})" for v, c in shown[:12])
                + (f", ... {len(shown) - 12} more values" if len(shown) > 12 else ""))
        extra = ([f"dropped {d.attribute}={d.value!r}: {d.reason}" for d in self.dropped_values]
                 + [f"rejected {r.path}: {r.reason}" for r in self.rejected]
                 + [f"skipped: {p}" for p in self.problems]
                 + [f"warning: {w}" for w in self.warnings])
        lines += extra[:max_lines]
        if len(extra) > max_lines:
            lines.append(f"... {len(extra) - max_lines} more in {Path(self.out) / REPORT}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- labels


@dataclass
class _Entry:
    image: str                   # absolute path
    id: str
    group: str
    names: dict[int, str]        # attribute index -> normalised value name
    split: str | None = None     # fixed by the reader
    labels: dict[int, int] = field(default_factory=dict)   # attribute index -> value id


def _entries(records: Iterable[LabelledImage], attrs: Sequence[AttributeColumn],
             problems: list[str]) -> tuple[list[_Entry], int]:
    """Records into entries with normalised labels; repeated images and values outside a
    fixed list go to ``problems``. Also returns the number of records."""
    fixed = [None if a.values is None else {normalise_value(v) for v in a.values}
             for a in attrs]
    entries: list[_Entry] = []
    seen: dict[str, str] = {}
    n = 0
    for n, rec in enumerate(records, 1):
        rid = rec.id if rec.id is not None else f"#{n}"
        path = os.path.abspath(os.path.expanduser(rec.image))
        if path in seen:
            problems.append(f"{rid}: image {rec.image} already used by {seen[path]}")
            continue
        if rec.split is not None and rec.split not in SPLITS:
            raise DatasetError(f"{rid}: split {rec.split!r} is not one of {', '.join(SPLITS)}")
        seen[path] = rid
        names = {}
        for a, attr in enumerate(attrs):
            value = normalise_value(rec.labels.get(attr.name))
            if value and (allowed := fixed[a]) is not None and value not in allowed:
                problems.append(f"{rid}: {attr.name}={value!r} is not one of its values")
            elif value:
                names[a] = value
        group = f"\0{n}" if rec.group is None else rec.group
        entries.append(_Entry(path, rid, group, names, rec.split))
    return entries, n


def _value_lists(entries: list[_Entry], attrs: Sequence[AttributeColumn], min_per_value: int,
                 dropped: list[DroppedValue]) -> list[list[str]]:
    """Value names per attribute (id order) after dropping the rare ones; sets entry labels."""
    lists = []
    for a, attr in enumerate(attrs):
        counts = Counter(e.names[a] for e in entries if a in e.names)
        rare = sorted(v for v, c in counts.items() if c < min_per_value)
        dropped += [DroppedValue(attr.name, v, counts[v],
                                 f"{counts[v]} image(s), fewer than min_per_value={min_per_value}")
                    for v in rare]
        kept = sorted(v for v in counts if v not in rare)
        if attr.values is not None:
            names = list(attr.values)
            ids = {normalise_value(v): i for i, v in enumerate(names)}
        else:
            names, ids = kept, {v: i for i, v in enumerate(kept)}
        if len(kept) < 2:
            have = ", ".join(f"{v!r} ({counts[v]})" for v in sorted(counts)) or "no labels"
            raise DatasetError(
                f"attribute {attr.name!r} (column {attr.source!r}) is left with {len(kept)} "
                f"value(s) seen on at least {min_per_value} images ({have}); an attribute "
                "needs two: leave it out of the attributes or lower --min-per-value")
        for e in entries:
            if a in e.names and e.names[a] not in rare:
                e.labels[a] = ids[e.names[a]]
        lists.append(names)
    return lists


# --------------------------------------------------------------------------- splits


def split_groups(labels: Sequence[Mapping[int, int]], groups: Sequence[str], seed: int,
                 valid_frac: float = 0.1, test_frac: float = 0.1) -> list[str]:
    """The split ("train" / "valid" / "test") of each image: whole groups, stratified.

    Iterative stratification over groups: the groups are shuffled (seeded); the label
    (attribute, value) with the fewest images still unassigned goes first, each of its groups
    to a split that has fewer than 2 images of it (test first: a query and a candidate; then
    train: a positive pair; then valid), else to the split that still wants most of it (its
    fraction of the label's images, less what it has), then most images. The first rule only
    for a label with 2 images for each split; a split whose fraction is 0 gets nothing."""
    fracs = {"train": 1.0 - valid_frac - test_frac, "valid": valid_frac, "test": test_frac}
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    keys = list(members)
    keys = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    group_labels = [Counter((a, v) for i in members[k] for a, v in labels[i].items())
                    for k in keys]
    total = Counter[Label]()
    by_label: dict[Label, list[int]] = {}
    for gi, c in enumerate(group_labels):
        total.update(c)
        for lab in c:
            by_label.setdefault(lab, []).append(gi)
    want = {s: {lab: f * n for lab, n in total.items()} for s, f in fracs.items()}
    have: dict[str, Counter[Label]] = {s: Counter() for s in SPLITS}
    want_images = {s: f * len(groups) for s, f in fracs.items()}
    prefer = {"test": 2, "valid": 1, "train": 0}
    floor_first = {"test": 2, "train": 1, "valid": 0}
    open_splits = [s for s in SPLITS if fracs[s] > 0]
    assigned: list[str | None] = [None] * len(keys)
    remaining = Counter(total)
    while remaining:
        lab = min(remaining, key=lambda x: (remaining[x], x))
        for gi in by_label[lab]:
            if assigned[gi] is not None:
                continue
            short = {s: total[lab] >= 2 * len(open_splits) and have[s][lab] < 2
                     for s in open_splits}
            s = max(open_splits, key=lambda s: (short[s], floor_first[s] * short[s],
                                                want[s][lab], want_images[s], prefer[s]))
            assigned[gi] = s
            want_images[s] -= len(members[keys[gi]])
            for other, n in group_labels[gi].items():
                want[s][other] -= n
                have[s][other] += n
                remaining[other] -= n
        remaining = +remaining      # drop the labels with nothing left to place
    out = ["train"] * len(groups)
    for gi, k in enumerate(keys):
        for i in members[k]:
            out[i] = assigned[gi] or "train"
    return out


def split_queries(labels: Sequence[tuple[int, int, int]], rng: np.random.Generator,
                  query_frac: float = 0.2) -> tuple[list[tuple[int, int, int]],
                                                    list[tuple[int, int, int]]]:
    """Queries and candidates of one split's ``(image_id, attribute, value)`` labels: per
    (attribute, value), ``query_frac`` of them (at least one, and one left as a candidate,
    when it has two or more) are queries, the rest candidates. Both lists sorted."""
    by_value: dict[Label, list[tuple[int, int, int]]] = {}
    for t in sorted(labels):
        by_value.setdefault((t[1], t[2]), []).append(t)
    queries, candidates = [], []
    for key in sorted(by_value):
        group = by_value[key]
        order = rng.permutation(len(group))
        n_q = min(max(1, round(query_frac * len(group))), len(group) - 1)
        queries += [group[i] for i in order[:n_q]]
        candidates += [group[i] for i in order[n_q:]]
    return sorted(queries), sorted(candidates)


def _assign_splits(entries: Sequence[_Entry], seed: int, valid_frac: float,
                   test_frac: float) -> list[str]:
    """Each entry's split: its own when the reader fixed one, else :func:`split_groups`."""
    where = [e.split or "" for e in entries]
    free = [i for i, e in enumerate(entries) if e.split is None]
    if free:
        chosen = split_groups([entries[i].labels for i in free], [entries[i].group for i in free],
                              seed, valid_frac, test_frac)
        for i, s in zip(free, chosen, strict=True):
            where[i] = s
    return where


# --------------------------------------------------------------------------- writing


def _copy_base(entries: Sequence[_Entry]) -> str:
    """The folder above every image: ``--link copy/symlink`` keeps the paths below it under
    ``OUT/images``, one base for all the splits so that two images never get one name."""
    paths = [e.image for e in entries]
    base = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    return base if os.path.isdir(base) else os.path.dirname(base)


def _place(entries: Sequence[_Entry], out: Path, link: str, base: str) -> list[str]:
    """How filenames_*.txt name each image (``link``), copying or linking when asked
    (below ``OUT/images``, as their paths below ``base``)."""
    if link == "absolute":
        return [e.image for e in entries]
    if link == "relative":
        root = os.path.abspath(out)
        return [Path(os.path.relpath(e.image, root)).as_posix() for e in entries]
    names = []
    for p in (e.image for e in entries):
        rel = Path("images") / os.path.relpath(p, base)
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        if link == "copy":
            shutil.copy2(p, dest)
        else:
            dest.symlink_to(p)
        names.append(rel.as_posix())
    return names


def _write_split(out: Path, split: str, entries: Sequence[_Entry], names: Sequence[str],
                 rng: np.random.Generator, query_frac: float) -> tuple[list, list]:
    (out / f"filenames_{split}.txt").write_text("".join(n + "\n" for n in names),
                                                encoding="utf-8")
    if split == "train":
        lines = [f"{i} " + " ".join(f"{a} {v}" for a, v in sorted(e.labels.items()))
                 for i, e in enumerate(entries)]
        (out / "label_train.txt").write_text("".join(x + "\n" for x in lines))
        return [], []
    triples = [(i, a, v) for i, e in enumerate(entries) for a, v in e.labels.items()]
    queries, candidates = split_queries(triples, rng, query_frac)
    for kind, rows in (("query", queries), ("candidate", candidates)):
        (out / f"{kind}_{split}.txt").write_text("".join(f"{i} {a} {v}\n" for i, a, v in rows))
    return queries, candidates


def _write_catalog(out: Path, attrs: Sequence[AttributeColumn], values: Sequence[list[str]],
                   rows: Sequence[tuple[str, str, _Entry]]) -> None:
    with open(out / "catalog.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "split", *(a.name for a in attrs)])
        for split, name, e in rows:
            writer.writerow([e.id, name, split, *(values[a][e.labels[a]] if a in e.labels else ""
                                                  for a in range(len(attrs)))])


def _count(report: DatasetReport, split: str, entries: Sequence[_Entry],
           queries: Sequence[tuple[int, int, int]], candidates: Sequence[tuple]) -> None:
    c = report.splits[split]
    c.images, c.groups = len(entries), len({e.group for e in entries})
    c.labels = sum(len(e.labels) for e in entries)
    c.queries, c.candidates = len(queries), len(candidates)
    for e in entries:
        for a, v in e.labels.items():
            ac = report.attributes[a]
            per = ac.images.setdefault(ac.values[v], {})
            per[split] = per.get(split, 0) + 1
    for _, a, v in queries:
        ac = report.attributes[a]
        per = ac.queries.setdefault(ac.values[v], {})
        per[split] = per.get(split, 0) + 1


def _warn(report: DatasetReport) -> None:
    """Values without a query in valid or test, attributes with a single query there."""
    for ac in report.attributes:
        for split in ("valid", "test"):
            if report.splits[split].images == 0:
                continue
            q = {v: per.get(split, 0) for v, per in ac.queries.items()}
            for v, per in ac.images.items():
                if q.get(v, 0) == 0:
                    report.warnings.append(
                        f"{split}: {ac.name}={v!r} has no query ({per.get(split, 0)} labelled "
                        f"image(s) there, {sum(per.values())} in all)")
            if sum(q.values()) == 1:
                report.warnings.append(f"{split}: {ac.name} has a single query")


# --------------------------------------------------------------------------- the builder


def _check_args(attrs: Sequence[AttributeColumn], min_per_value: int, valid_frac: float,
                test_frac: float, query_frac: float, link: str) -> None:
    names = [a.name for a in attrs]
    if not attrs:
        raise DatasetError("no attributes given")
    if len(set(names)) != len(names):
        raise DatasetError(f"duplicate attribute names in {names}")
    if link not in LINK_MODES:
        raise DatasetError(f"link must be one of {', '.join(LINK_MODES)}, got {link!r}")
    if min_per_value < 1:
        raise DatasetError(f"min_per_value must be at least 1, got {min_per_value}")
    if not (0 <= valid_frac and 0 <= test_frac and valid_frac + test_frac < 1):
        raise DatasetError(f"valid and test fractions must be >= 0 with a sum under 1, got "
                           f"{valid_frac} and {test_frac}")
    if not 0 < query_frac < 1:
        raise DatasetError(f"query fraction must be between 0 and 1, got {query_frac}")


def _check_images(paths: list[str], ids: list[str]) -> list[Reject | None]:
    """:func:`model.rejected.image_reject` of every image, in processes for many images."""
    workers = min(available_cpus(), len(paths) // PARALLEL_CHECK)
    if workers < 2:
        return [image_reject(p, i) for p, i in zip(paths, ids, strict=True)]
    with get_context().Pool(workers) as pool:
        return pool.starmap(image_reject, zip(paths, ids, strict=True), chunksize=64)


def _usable(entries: list[_Entry], check_images: bool, report: DatasetReport) -> list[_Entry]:
    """Entries with at least one label whose image passes the checks."""
    labelled = [e for e in entries if e.names]
    report.unlabelled = len(entries) - len(labelled)
    if check_images:
        rejects = _check_images([e.image for e in labelled], [e.id for e in labelled])
        report.rejected = [r for r in rejects if r is not None]
        labelled = [e for e, r in zip(labelled, rejects, strict=True) if r is None]
    if not labelled:
        shown = "".join(f"; {r.path}: {r.reason}" for r in report.rejected[:3])
        raise DatasetError(f"no usable image: {report.records} records, {report.unlabelled} "
                           f"without labels, {len(report.rejected)} rejected{shown}")
    return labelled


def build_dataset(records: Iterable[LabelledImage], attributes: Sequence[AttributeColumn | str],
                  out: str | os.PathLike[str], *, seed: int = 0, min_per_value: int = 20,
                  valid_frac: float = 0.1, test_frac: float = 0.1, query_frac: float = 0.2,
                  link: str = "relative", check_images: bool = True,
                  problems: Sequence[str] = ()) -> DatasetReport:
    """Write the published layout of ``records`` to ``out`` (see the module's docstring);
    ``problems`` are the reader's own skipped rows, copied into the report. Raises
    :class:`DatasetError` when the input cannot make a dataset."""
    attrs = [AttributeColumn(a) if isinstance(a, str) else a for a in attributes]
    _check_args(attrs, min_per_value, valid_frac, test_frac, query_frac, link)
    out_dir = Path(out)
    report = DatasetReport(str(out_dir), 0, {s: SplitCounts() for s in SPLITS}, [],
                           problems=list(problems))
    entries, report.records = _entries(records, attrs, report.problems)
    if not entries:
        raise DatasetError("no records to build a dataset from")
    # rejected images first, so that the counts (and min_per_value) see only usable images
    entries = _usable(entries, check_images, report)
    values = _value_lists(entries, attrs, min_per_value, report.dropped_values)
    report.unlabelled += sum(1 for e in entries if not e.labels)
    entries = [e for e in entries if e.labels]
    report.attributes = [AttributeCounts(a.name, v) for a, v in zip(attrs, values, strict=True)]
    where = _assign_splits(entries, seed, valid_frac, test_frac)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    rows: list[tuple[str, str, _Entry]] = []
    base = _copy_base(entries)
    for split in SPLITS:
        part = [e for e, s in zip(entries, where, strict=True) if s == split]
        names = _place(part, out_dir, link, base) if part else []
        q, c = _write_split(out_dir, split, part, names, rng, query_frac)
        _count(report, split, part, q, c)
        rows += [(split, n, e) for n, e in zip(names, part, strict=True)]
    _warn(report)
    (out_dir / "attributes.json").write_text(json.dumps(
        [{"name": a.name, "n_values": len(v), "values": v} for a, v in zip(attrs, values,
                                                                           strict=True)],
        indent=2) + "\n", encoding="utf-8")
    _write_catalog(out_dir, attrs, values, rows)
    write_rejected(out_dir, report.rejected)
    (out_dir / REPORT).write_text(json.dumps(report.to_dict(), indent=2) + "\n",
                                  encoding="utf-8")
    return report


# --------------------------------------------------------------------------- the catalog


def _columns(items: Sequence[CatalogItem]) -> list[str]:
    cols: dict[str, None] = {}
    for it in items:
        cols.update(dict.fromkeys(it.metadata))
    return list(cols)


def records_from_catalog(path: str | os.PathLike[str], attributes: Sequence[AttributeColumn],
                         group_by: str | None = None) -> tuple[list[LabelledImage], list[str]]:
    """A catalog (CSV / JSON Lines, :func:`model.catalog.load_catalog`) as labelled images;
    also the problems (cells that are not a value). Raises DatasetError for a missing
    label or group column and for empty group cells, CatalogError for a bad catalog."""
    catalog = load_catalog(path)
    if not catalog.items:
        raise DatasetError(f"{path}: the catalog has no items")
    cols = _columns(catalog.items)
    wanted = [a.source for a in attributes] + ([group_by] if group_by else [])
    if missing := [c for c in dict.fromkeys(wanted) if c not in cols]:
        raise DatasetError(f"{path}: no column {', '.join(map(repr, missing))}; the catalog's "
                           f"columns: id, image{''.join(', ' + c for c in cols)}")
    problems, records = [], []
    empty_groups = []
    for it in catalog.items:
        labels = {}
        for a in attributes:
            cell = it.metadata.get(a.source)
            if isinstance(cell, dict | list):
                problems.append(f"{it.id}: {a.source} is not a single value ({cell!r})")
            elif cell is not None:
                labels[a.name] = str(cell)
        group = None
        if group_by:
            cell = it.metadata.get(group_by)
            group = None if cell is None or not str(cell).strip() else str(cell).strip()
            if group is None:
                empty_groups.append(it.id)
        records.append(LabelledImage(it.image, labels, group, it.id))
    if empty_groups:
        shown = ", ".join(map(repr, empty_groups[:5]))
        more = f" and {len(empty_groups) - 5} more" if len(empty_groups) > 5 else ""
        raise DatasetError(f"{path}: the group column {group_by!r} is empty for "
                           f"{len(empty_groups)} item(s) (ids {shown}{more}); every item needs "
                           "a group (or leave out --group-by)")
    return records, problems


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.dataset",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--catalog", required=True, help="catalog CSV or JSON Lines (id, image, ...)")
    p.add_argument("--attributes", required=True,
                   help="label columns, comma-separated; NAME=COLUMN renames (collar=collar_type)")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--group-by", default=None,
                   help="column whose equal values stay in one split (e.g. product_id)")
    add_layout_arguments(p, min_per_value=20, check_help="do not decode the images (a bad one "
                         "then fails training, not here)")
    return p


def add_layout_arguments(p: argparse.ArgumentParser, *, min_per_value: int, check_help: str,
                         fractions: bool = True) -> None:
    """The flags every input of the builder shares: seed, value threshold, split fractions
    (``fractions=False`` where the input has its own partition), links and image checks."""
    p.add_argument("--seed", type=int, default=0)
    keep = ": keep every value" if min_per_value == 1 else ""
    p.add_argument("--min-per-value", type=int, default=min_per_value,
                   help=f"drop values seen on fewer images (default {min_per_value}{keep})")
    if fractions:
        p.add_argument("--valid-frac", type=float, default=0.1)
        p.add_argument("--test-frac", type=float, default=0.1)
    p.add_argument("--query-frac", type=float, default=0.2)
    p.add_argument("--link", choices=LINK_MODES, default="relative",
                   help="how filenames_*.txt refer to the images (default: relative paths)")
    p.add_argument("--no-check-images", action="store_true", help=check_help)


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        out_catalog = Path(a.out) / "catalog.csv"
        if Path(a.catalog).exists() and out_catalog.exists() \
                and out_catalog.samefile(a.catalog):
            raise DatasetError(f"--out {a.out} would overwrite the catalog {a.catalog}; "
                               "choose another folder")
        attrs = parse_attributes(a.attributes)
        records, problems = records_from_catalog(a.catalog, attrs, a.group_by)
        report = build_dataset(records, attrs, a.out, seed=a.seed,
                               min_per_value=a.min_per_value, valid_frac=a.valid_frac,
                               test_frac=a.test_frac, query_frac=a.query_frac, link=a.link,
                               check_images=not a.no_check_images, problems=problems)
    except CatalogError as e:
        print(f"error: {a.catalog}: {e}" if a.catalog not in str(e) else f"error: {e}",
              file=sys.stderr)
        return 2
    except (DatasetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"report: {Path(a.out) / REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
