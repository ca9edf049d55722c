"""Loaders for the published data layout (SPEC section 6) and triplet sampling.

A dataset folder holds ``filenames_{train,valid,test}.txt``, ``label_train.txt``,
``query_{valid,test}.txt``, ``candidate_{valid,test}.txt`` and an attribute description:
``attributes.json`` (``[{"name", "n_values", "values"?}, ...]``), ``attributes.txt``
(``name n_values`` per line, or just the name of a built-in set such as ``FashionAI``), or
the authors' ``meta.json`` in the folder or its parent (:data:`META_FILE`).
Every problem with these files raises :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.attributes import BUILTIN_ATTRIBUTES, AttributeSpec, builtin_attributes

SPLITS = ("train", "valid", "test")
Triple = tuple[int, int, int]  # (image_id, attribute index, value)


class DataError(ValueError):
    """A dataset file or image that cannot be used; the message names the path (and line)."""


@dataclass
class Split:
    """One split of a dataset folder. Image ids index ``image_paths``."""

    name: str
    root: Path
    attributes: list[AttributeSpec]
    image_paths: list[Path]
    queries: list[Triple] = field(default_factory=list)
    candidates: list[Triple] = field(default_factory=list)
    # image_id -> {attr: value}: label_train.txt for train; for valid/test the union of
    # the query and candidate labels.
    labels: dict[int, dict[int, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_paths)


# --------------------------------------------------------------------------- attributes

#: The authors' split archive describes its datasets in one ``meta.json`` at its root
#: (``data/meta.json`` beside ``data/FashionAI/``...), keyed by dataset name, each entry
#: ``{"ATTRIBUTES": [names in order], "ATTRIBUTES_NUM": {name: n}, "ATTRIBUTES_VALUES":
#: {name: [value names]}}``; their AAAI-2020 release had one such entry, unkeyed, per folder.
META_FILE = "meta.json"
DESCRIPTION_FILES = ("attributes.json", "attributes.txt", META_FILE)


def _builtin(name: str) -> list[AttributeSpec] | None:
    found = builtin_attributes(name)
    return None if found is None else list(found)


def find_attributes(root: str | os.PathLike) -> list[AttributeSpec] | None:
    """The attributes a dataset folder describes, or None when it describes none.

    Looked up in order: ``attributes.json``, ``attributes.txt`` and ``meta.json`` in the
    folder, then the authors' ``meta.json`` in its parent folder, whose entry is the one
    named like the folder (case-insensitive: ``data/FashionAI`` reads ``"FashionAI"``).
    """
    folder = Path(root)
    for name in DESCRIPTION_FILES:
        if (folder / name).is_file():
            return read_attributes(folder / name)
    parent_meta = folder.resolve().parent / META_FILE
    if folder.is_dir() and parent_meta.is_file() and _is_authors_meta(parent_meta):
        return _check_specs(parent_meta, _parse_meta(parent_meta, folder.resolve().name,
                                                     keyed_only=True))
    return None


def _is_authors_meta(path: Path) -> bool:
    """Whether a parent folder's meta.json is the authors' (some other tool's is ignored)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and any(isinstance(v, dict) and "ATTRIBUTES" in v
                                          for v in data.values())


def read_attributes(root: str | os.PathLike) -> list[AttributeSpec]:
    """Attribute names and value counts of a dataset, in order.

    ``root`` is a dataset folder (described as :func:`find_attributes` says), one of those
    files, or the name of a built-in set ("FashionAI", "DARN", "DeepFashion").
    """
    path = Path(root)
    if not path.exists() and (specs := _builtin(str(root))) is not None:
        return specs
    if path.is_dir():
        found = find_attributes(path)
        if found is None:
            raise DataError(
                f"{root}: no attributes.json or attributes.txt describing the attributes, and "
                f"no {META_FILE} here or in the parent folder (the authors' split archive); "
                "write attributes.txt with 'name n_values' lines in order, or one line naming "
                f"a built-in set ({', '.join(BUILTIN_ATTRIBUTES)}), or name the set on the "
                "command line (--attributes FashionAI)")
        return found
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.name == META_FILE:
        return _check_specs(path, _parse_meta(path, path.parent.name, keyed_only=False))
    text = path.read_text(encoding="utf-8")
    specs = _parse_json_attributes(path, text) if path.suffix == ".json" else \
        _parse_text_attributes(path, text)
    return _check_specs(path, specs)


def _check_specs(path: Path, specs: list[AttributeSpec]) -> list[AttributeSpec]:
    names = [s.name for s in specs]
    if not specs:
        raise DataError(f"{path}: no attributes")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate attribute names in {names}")
    return specs


def _parse_meta(path: Path, dataset: str, *, keyed_only: bool) -> list[AttributeSpec]:
    """The entry of ``dataset`` in an authors' ``meta.json`` (or its only, unkeyed entry
    unless ``keyed_only``) as specs."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object of datasets")
    if "ATTRIBUTES" in data and not keyed_only:
        return _meta_specs(path, "", data)
    keys = {str(k).lower(): k for k in data if isinstance(data[k], dict)}
    key = keys.get(dataset.lower())
    if key is None:
        raise DataError(f"{path}: no entry for the dataset {dataset!r} (the folder's name); "
                        f"it describes {', '.join(map(str, data)) or 'none'}: name the folder "
                        "like one of them, or describe it with attributes.json")
    return _meta_specs(path, f"[{key!r}]", data[key])


def _meta_specs(path: Path, where: str, entry: dict) -> list[AttributeSpec]:
    names = entry.get("ATTRIBUTES")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}{where}: 'ATTRIBUTES' must be a list of attribute names")
    nums, values = entry.get("ATTRIBUTES_NUM") or {}, entry.get("ATTRIBUTES_VALUES") or {}
    if not isinstance(nums, dict) or not isinstance(values, dict):
        raise DataError(f"{path}{where}: 'ATTRIBUTES_NUM' and 'ATTRIBUTES_VALUES' must be "
                        "objects keyed by attribute name")
    out = []
    for name in names:
        listed = values.get(name)
        n = nums.get(name, len(listed) if isinstance(listed, list) else None)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise DataError(f"{path}{where}: attribute {name!r}: no positive value count in "
                            f"'ATTRIBUTES_NUM' (or value names in 'ATTRIBUTES_VALUES')")
        if isinstance(listed, list) and len(listed) != n:
            raise DataError(f"{path}{where}: attribute {name!r}: {len(listed)} value names "
                            f"for ATTRIBUTES_NUM {n}")
        out.append(AttributeSpec(name, n))
    return out


def _parse_json_attributes(path: Path, text: str) -> list[AttributeSpec]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
    if isinstance(data, str) and (specs := _builtin(data)) is not None:
        return specs
    if isinstance(data, dict) and "attributes" in data:
        data = data["attributes"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of {{\"name\", \"n_values\"}} objects")
    out = []
    for i, item in enumerate(data):
        try:
            if isinstance(item, str):
                raise TypeError("an entry is a bare name; give {\"name\": ..., \"n_values\": N}")
            name, n = str(item["name"]), int(item["n_values"])
            values = item.get("values")
            if values is not None and len(values) != n:
                raise ValueError(f"{len(values)} value names for n_values={n}")
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: attribute #{i}: {e}") from e
        if n < 1:
            raise DataError(f"{path}: attribute #{i} ({name}): n_values must be >= 1, got {n}")
        out.append(AttributeSpec(name, n))
    return out


def _parse_text_attributes(path: Path, text: str) -> list[AttributeSpec]:
    lines = [(n, ln.split("#")[0].strip()) for n, ln in enumerate(text.splitlines(), 1)]
    lines = [(n, ln) for n, ln in lines if ln]
    if len(lines) == 1 and (specs := _builtin(lines[0][1])) is not None:
        return specs
    out = []
    for n, ln in lines:
        parts = ln.replace(",", " ").split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise DataError(f"{path}:{n}: expected 'name n_values', got {ln!r}")
        out.append(AttributeSpec(parts[0], int(parts[1])))
    return out


# --------------------------------------------------------------------------- splits


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                yield n, line.strip()


def _parse_pairs(path: Path, n: int, line: str, n_images: int,
                 attrs: Sequence[AttributeSpec], triple: bool) -> tuple[int, list[tuple[int, int]]]:
    parts = line.split()
    if len(parts) < 3 or len(parts) % 2 == 0 or (triple and len(parts) != 3):
        want = "'image_id attr value'" if triple else "'image_id attr value [attr value ...]'"
        raise DataError(f"{path}:{n}: expected {want}, got {line!r}")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise DataError(f"{path}:{n}: non-integer field in {line!r}") from None
    image_id = nums[0]
    if not 0 <= image_id < n_images:
        raise DataError(f"{path}:{n}: image id {image_id} out of range "
                        f"(the filenames file lists {n_images} images)")
    pairs = list(zip(nums[1::2], nums[2::2], strict=True))
    for a, v in pairs:
        if not 0 <= a < len(attrs):
            raise DataError(f"{path}:{n}: attribute index {a} out of range "
                            f"(the dataset has {len(attrs)} attributes)")
        if attrs[a].n_values and not 0 <= v < attrs[a].n_values:
            raise DataError(f"{path}:{n}: value {v} out of range for attribute "
                            f"{attrs[a].name!r} ({attrs[a].n_values} values)")
    return image_id, pairs


def _resolve_base(root: Path, names: list[str], image_root: Path | None) -> Path:
    if image_root is not None or not names:
        return image_root or root
    first = Path(names[0])
    if first.is_absolute() or (root / first).exists():
        return root
    for sub in ("images", "Images"):
        if (root / sub / first).exists():
            return root / sub
    return root


def load_split(root: str | os.PathLike, split: str, *, image_root: str | os.PathLike | None = None,
               attributes: Sequence[AttributeSpec] | None = None,
               check_files: bool = True) -> Split:
    """Read one split of a dataset folder, validating every line.

    Image paths are relative to ``image_root`` (default: ``root``, or ``root/images`` when
    the files are there). ``check_files`` verifies that every image file exists (it does not
    decode them).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    attrs = list(attributes) if attributes is not None else read_attributes(root)
    fn_path = root / f"filenames_{split}.txt"
    names = [line for _, line in _read_lines(fn_path)]
    base = _resolve_base(root, names, Path(image_root) if image_root else None)
    paths = [Path(os.path.abspath(base / p)) for p in names]
    out = Split(split, root, attrs, paths)
    if split == "train":
        path = root / "label_train.txt"
        for n, line in _read_lines(path):
            image_id, pairs = _parse_pairs(path, n, line, len(paths), attrs, triple=False)
            out.labels.setdefault(image_id, {}).update(pairs)
    else:
        for kind, dest in (("query", out.queries), ("candidate", out.candidates)):
            path = root / f"{kind}_{split}.txt"
            for n, line in _read_lines(path):
                image_id, [(a, v)] = _parse_pairs(path, n, line, len(paths), attrs, triple=True)
                dest.append((image_id, a, v))
                out.labels.setdefault(image_id, {})[a] = v
    if check_files:
        missing = [p for p in paths if not p.is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"{fn_path}: {len(missing)} image file(s) missing: "
                            f"{', '.join(map(str, missing[:3]))}{more}")
    return out


# --------------------------------------------------------------------------- triplets


class TripletSampler:
    """Triplets per SPEC section 4: an attribute uniformly (or with given weights), two
    different values of it; anchor and positive share one value, the negative has the other.

    Only attributes with at least two values, one of them on two images or more, are used.
    """

    def __init__(self, labels: Mapping[int, Mapping[int, int]], n_attrs: int):
        by_value: list[dict[int, list[int]]] = [{} for _ in range(n_attrs)]
        for image_id in sorted(labels):
            for a, v in labels[image_id].items():
                by_value[a].setdefault(v, []).append(image_id)
        self._pools: dict[int, tuple[np.ndarray, list[np.ndarray], np.ndarray]] = {}
        for a, groups in enumerate(by_value):
            values = np.array(sorted(groups))
            pos_ok = np.array([len(groups[v]) >= 2 for v in values], bool)
            if len(values) >= 2 and pos_ok.any():
                self._pools[a] = (values, [np.array(groups[v]) for v in values],
                                  np.flatnonzero(pos_ok))
        self.attributes = sorted(self._pools)
        if not self.attributes:
            raise DataError("no attribute has two values with enough images to form triplets")

    def sample(self, n: int, rng: np.random.Generator,
               weights: Sequence[float] | None = None) -> np.ndarray:
        """``n`` triplets as an int64 array [n, 4]: anchor, positive, negative, attribute.

        ``weights`` (one per attribute index of the dataset, any positive scale): how often
        each attribute is picked; uniform over :attr:`attributes` without it.
        """
        out = np.empty((n, 4), np.int64)
        if weights is None:
            attrs = np.asarray(self.attributes)[rng.integers(len(self.attributes), size=n)]
        else:
            w = np.asarray(weights, dtype=np.float64)[self.attributes]
            if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
                raise ValueError(f"attribute weights must be non-negative, not all 0: {weights}")
            attrs = rng.choice(np.asarray(self.attributes), size=n, p=w / w.sum())
        out[:, 3] = attrs
        for a in self.attributes:
            rows = np.flatnonzero(attrs == a)
            if len(rows) == 0:
                continue
            values, pools, pos_ok = self._pools[a]
            pos = pos_ok[rng.integers(len(pos_ok), size=len(rows))]
            neg = rng.integers(len(values) - 1, size=len(rows))
            neg += neg >= pos  # a different value, uniform over the others
            for k in np.unique(pos):
                sel, pool = rows[pos == k], pools[k]
                i = rng.integers(len(pool), size=len(sel))
                j = rng.integers(len(pool) - 1, size=len(sel))
                j += j >= i
                out[sel, 0], out[sel, 1] = pool[i], pool[j]
            for k in np.unique(neg):
                sel, pool = rows[neg == k], pools[k]
                out[sel, 2] = pool[rng.integers(len(pool), size=len(sel))]
        return out
