"""The dataset builder (model/training/dataset.py, `python -m model.dataset`): the splitting
rules (groups, stratification, partial labels), what it drops and why, and bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from testkit import REPO_ROOT, write_image

from model.training import dataset
from model.training.data import load_split, read_attributes
from model.training.dataset import (
    AttributeColumn,
    DatasetError,
    LabelledImage,
    build_dataset,
    split_groups,
    split_queries,
)

VALUES = {"neck": ["round", "v", "square", "boat"], "sleeve": ["short", "long", "none"]}


def _labels(n: int, seed: int = 0, blank: float = 0.3) -> list[dict[int, int]]:
    """Random partial labels over VALUES; value 3 of neck is rare (about 25 images)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lab = {a: int(rng.integers(len(v) - (a == 0))) for a, v in enumerate(VALUES.values())}
        if i % 24 == 0:
            lab[0] = 3
        lab = {a: v for a, v in lab.items() if rng.random() >= blank}
        out.append(lab or {1: 0})
    return out


def test_split_groups_keeps_groups_whole_and_every_value_in_valid_and_test() -> None:
    labels = _labels(600)
    groups = [f"p{i // 3}" for i in range(600)]
    where = split_groups(labels, groups, seed=3, valid_frac=0.1, test_frac=0.1)
    by_group: dict[str, set[str]] = {}
    for g, s in zip(groups, where, strict=True):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    sizes = Counter(where)
    assert 45 <= sizes["test"] <= 75 and 45 <= sizes["valid"] <= 75
    per = Counter((s, a, v) for lab, s in zip(labels, where, strict=True) for a, v in lab.items())
    for a, names in enumerate(VALUES.values()):
        for v in range(len(names)):
            assert per["test", a, v] >= 2 and per["valid", a, v] >= 2, (a, v)
    assert split_groups(labels, groups, seed=3) == where            # seeded
    assert split_groups(labels, groups, seed=4) != where
    # no valid split asked: nothing goes there
    assert "valid" not in split_groups(labels, groups, seed=3, valid_frac=0.0)


def test_split_queries_per_value() -> None:
    triples = [(i, a, v) for i, lab in enumerate(_labels(200, blank=0.0)) for a, v in lab.items()]
    triples.append((999, 1, 9))                                      # a value seen once
    q, c = split_queries(triples, np.random.default_rng(0), 0.2)
    assert sorted(q + c) == sorted(triples) and not set(q) & set(c)
    for key in {(a, v) for _, a, v in triples} - {(1, 9)}:
        nq = sum(1 for _, a, v in q if (a, v) == key)
        nc = sum(1 for _, a, v in c if (a, v) == key)
        assert nq >= 1 and nc >= 1 and abs(nq - 0.2 * (nq + nc)) <= 1, key
    assert (999, 1, 9) in c                              # alone: a candidate, never a query


def _records(tmp_path: Path, n: int = 240) -> list[LabelledImage]:
    img = write_image(tmp_path / "img" / "x.png")
    recs = []
    for i, lab in enumerate(_labels(n, seed=1)):
        path = tmp_path / "img" / f"{i:03d}.png"
        path.write_bytes(img.read_bytes())
        names = {a: list(VALUES[a])[v] for a, v in zip(VALUES, [lab.get(0), lab.get(1)],
                                                          strict=True) if v is not None}
        recs.append(LabelledImage(str(path), {k: f"  {v.upper()} " for k, v in names.items()},
                                  group=f"p{i // 2}", id=f"id{i}"))
    return recs


def test_build_dataset_partial_labels_round_trip(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    recs = _records(tmp_path)
    (tmp_path / "img" / "007.png").write_bytes(b"")
    monkeypatch.setattr(dataset, "PARALLEL_CHECK", 100)      # the images checked in processes
    out = tmp_path / "ds"
    report = build_dataset(recs, ["neck", "sleeve"], out, seed=0, min_per_value=5)
    attrs = json.loads((out / "attributes.json").read_text())
    assert attrs == [{"name": "neck", "n_values": 4, "values": ["boat", "round", "square", "v"]},
                     {"name": "sleeve", "n_values": 3, "values": ["long", "none", "short"]}]
    assert [a.name for a in read_attributes(out)] == ["neck", "sleeve"]
    expected = {r.image: {a: v.strip().casefold() for a, v in r.labels.items()} for r in recs
                if not r.image.endswith("007.png")}
    seen = {}
    for split in ("train", "valid", "test"):
        s = load_split(out, split)
        for i, labs in s.labels.items():
            seen[str(s.image_paths[i])] = {attrs[a]["name"]: attrs[a]["values"][v]
                                           for a, v in labs.items()}
        if split != "train":   # each labelled (image, attribute) is a query or a candidate
            assert len(s.queries) + len(s.candidates) == sum(len(x) for x in s.labels.values())
            assert {a for _, a, _ in s.queries} == {0, 1}
    assert seen == expected                    # every image, with exactly its own labels
    assert [(r.id, r.reason) for r in report.rejected] == [("id7", "empty")]
    assert report.images == len(recs) - 1 and not report.dropped_values and not report.warnings
    assert (out / "filenames_train.txt").read_text().startswith("../img/")   # not copied
    assert not (out / "images").exists()
    saved = json.loads((out / "dataset_report.json").read_text())
    assert saved["splits"]["test"]["images"] == report.splits["test"].images


def test_build_dataset_drops_rare_values_and_refuses_a_single_value(tmp_path: Path) -> None:
    recs = _records(tmp_path)
    rare = sum(1 for r in recs if r.labels.get("neck", "").strip() == "BOAT")
    assert 5 < rare < 20
    report = build_dataset(recs, ["neck", "sleeve"], tmp_path / "a", min_per_value=20)
    assert [(d.attribute, d.value, d.images) for d in report.dropped_values] == \
        [("neck", "boat", rare)]
    assert read_attributes(tmp_path / "a")[0].n_values == 3
    # a fixed value list keeps the ids (and the dropped value's slot)
    fixed = AttributeColumn("neck", values=("Round", "V", "Square", "Boat", "Halter"))
    build_dataset(recs, [fixed, "sleeve"], tmp_path / "b", min_per_value=20)
    spec = json.loads((tmp_path / "b" / "attributes.json").read_text())[0]
    assert spec["values"] == list(fixed.values)
    train = load_split(tmp_path / "b", "train")
    assert {v for labs in train.labels.values() for a, v in labs.items() if a == 0} == {0, 1, 2}
    one = [LabelledImage(r.image, {"neck": "round", "sleeve": r.labels.get("sleeve", "")})
           for r in recs]
    with pytest.raises(DatasetError, match="'neck'.*1 value"):
        build_dataset(one, ["neck", "sleeve"], tmp_path / "c")


def test_build_dataset_keeps_a_fixed_split(tmp_path: Path) -> None:
    recs = _records(tmp_path, 120)
    fixed = [LabelledImage(r.image, r.labels, r.group, r.id,
                           split=("train", "train", "valid", "test")[i % 4] if i < 60 else None)
             for i, r in enumerate(recs)]
    build_dataset(fixed, ["neck", "sleeve"], tmp_path / "ds", min_per_value=3)
    with open(tmp_path / "ds" / "catalog.csv", newline="") as fh:
        split_of = {row["id"]: row["split"] for row in csv.DictReader(fh)}
    assert all(split_of[r.id or ""] == r.split for r in fixed if r.split)
    assert {split_of[r.id or ""] for r in fixed if r.split is None} == {"train", "valid", "test"}
    bad = [LabelledImage(recs[0].image, recs[0].labels, split="val")]
    with pytest.raises(DatasetError, match="split 'val'"):
        build_dataset(bad, ["neck"], tmp_path / "bad", min_per_value=1)



LAYOUT_FILES = ("filenames_train.txt", "filenames_valid.txt", "filenames_test.txt",
                "label_train.txt", "query_valid.txt", "candidate_valid.txt", "query_test.txt",
                "candidate_test.txt", "attributes.json", "catalog.csv")


def test_build_dataset_with_a_fixed_seed_is_reproducible(tmp_path: Path) -> None:
    recs = _records(tmp_path)
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        build_dataset(recs, ["neck", "sleeve"], tmp_path / name, seed=seed, min_per_value=5)
    files = {n: {f: (tmp_path / n / f).read_bytes() for f in LAYOUT_FILES} for n in "abc"}
    assert files["a"] == files["b"]                       # the same seed: the same layout
    assert files["a"]["filenames_test.txt"] != files["c"]["filenames_test.txt"]
    assert files["a"]["query_test.txt"] != files["c"]["query_test.txt"]


def test_build_dataset_gives_every_value_test_queries(tmp_path: Path) -> None:
    """Stratified: each kept value has test (and valid) queries and candidates, about 20%
    of its labelled test images queries, though 30% of the labels are blank."""
    out = tmp_path / "ds"
    build_dataset(_records(tmp_path), ["neck", "sleeve"], out, seed=2, min_per_value=5)
    attrs = read_attributes(out)
    for split in ("valid", "test"):
        s = load_split(out, split)
        for a, spec in enumerate(attrs):
            for v in range(spec.n_values):
                nq = sum(1 for _, qa, qv in s.queries if (qa, qv) == (a, v))
                nc = sum(1 for _, ca, cv in s.candidates if (ca, cv) == (a, v))
                assert nq >= 1 and nc >= 1, (split, spec.name, v)
                assert abs(nq - 0.2 * (nq + nc)) <= 1, (split, spec.name, v, nq, nc)


@pytest.mark.parametrize("link", ["copy", "symlink"])
def test_build_dataset_copies_only_when_asked(tmp_path: Path, link: str) -> None:
    """Images of the same name in two folders (train/0.png, test/0.png) keep their own
    paths below OUT/images; each filenames_*.txt line is the image it was built from."""
    img = write_image(tmp_path / "x.png")
    recs = []
    for split in ("train", "test"):
        for i in range(6):
            path = tmp_path / "src" / split / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(img.read_bytes() + split.encode() + bytes([i]))  # all different
            recs.append(LabelledImage(str(path), {"neck": "ab"[i % 2]}, split=split))
    out = tmp_path / "ds"
    build_dataset(recs, ["neck"], out, min_per_value=1, link=link)
    for split in ("train", "test"):
        lines = (out / f"filenames_{split}.txt").read_text().split()
        assert lines == [f"images/{split}/{i}.png" for i in range(6)]
        for i, line in enumerate(lines):
            assert (out / line).read_bytes() == (tmp_path / "src" / split / f"{i}.png"
                                                 ).read_bytes()
            assert (out / line).is_symlink() == (link == "symlink")


def test_rejects_follow_the_indexers_rules(tmp_path: Path) -> None:
    """The builder skips an image for the reason the indexer's loader rejects it with."""
    from indexer.embed.local_engine import EmbedLimits, ItemLoader
    good = write_image(tmp_path / "good.png")
    data = good.read_bytes()
    files = {"good.png": data, "truncated.png": data[: len(data) // 2], "empty.jpg": b"",
             "text.jpg": b"not an image\n", "noise.png": bytes(range(256)) * 4}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "folder.jpg").mkdir()
    loader = ItemLoader(lambda im: im, EmbedLimits(), {}, {}, {})
    names = [*files, "folder.jpg", "missing.jpg"]
    for k, name in enumerate(names):
        path = str(tmp_path / name)
        ours = dataset.image_reject(path, f"i{k}")
        theirs = loader.load(k, f"i{k}", path)
        assert (ours.reason if ours else "ok") == (theirs.reason or "ok"), name
    assert dataset.image_reject(str(good), "g") is None

def _catalog(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    path = tmp_path / "catalog.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model.dataset", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_catalog_with_groups_and_broken_images(tmp_path: Path) -> None:
    rows = []
    for i, r in enumerate(_records(tmp_path, 120)):
        rows.append({"id": r.id or "", "image": r.image, "pid": f"P{i // 3}",
                     "neckline": r.labels.get("neck", ""), "sleeve": r.labels.get("sleeve", "")})
    (tmp_path / "img" / "001.png").write_bytes(b"not an image")
    (tmp_path / "img" / "002.png").unlink()
    cat = _catalog(tmp_path, rows)
    out = tmp_path / "ds"
    boat = sum(1 for k, x in enumerate(rows) if x["neckline"].strip() == "BOAT" and k not in (1, 2))
    assert boat >= 1
    r = _cli("--catalog", str(cat), "--attributes", "neck=neckline,sleeve", "--group-by", "pid",
             "--out", str(out), "--min-per-value", str(boat + 1), "--seed", "1")
    assert r.returncode == 0, r.stderr
    # the report, printed and written: what was dropped and rejected, and why
    assert "2 rejected" in r.stdout
    assert f"dropped neck='boat': {boat} image(s), fewer than min_per_value={boat + 1}" \
        in r.stdout
    assert f"rejected {tmp_path / 'img' / '001.png'}: not_an_image" in r.stdout
    saved = json.loads((out / "dataset_report.json").read_text())
    assert [(d["attribute"], d["value"], d["images"]) for d in saved["dropped_values"]] == \
        [("neck", "boat", boat)]
    assert {(x["id"], x["reason"]) for x in saved["rejected"]} == \
        {("id1", "not_an_image"), ("id2", "missing")}
    assert [a["name"] for a in saved["attributes"]] == ["neck", "sleeve"]
    assert "boat" not in saved["attributes"][0]["values"]
    with open(out / "rejected.csv", newline="") as fh:
        assert {(x["id"], x["reason"]) for x in csv.DictReader(fh)} == \
            {("id1", "not_an_image"), ("id2", "missing")}
    with open(out / "catalog.csv", newline="") as fh:
        built = list(csv.DictReader(fh))
    split_of = {b["id"]: b["split"] for b in built}
    pid = {x["id"]: x["pid"] for x in rows}
    assert len({(pid[i], s) for i, s in split_of.items()}) == len({pid[i] for i in split_of})
    only_boat = sum(1 for k, x in enumerate(rows) if k not in (1, 2) and not x["sleeve"]
                    and x["neckline"].strip() in ("", "BOAT"))      # no label left: left out
    assert saved["unlabelled"] == only_boat
    assert len(built) == 118 - only_boat and set(split_of.values()) == {"train", "valid", "test"}


BAD_INPUT = [
    ("ok", ""),
    ("no-column", "no column 'collar'"),
    ("one-value", "attribute 'neck' (column 'neck') is left with 1 value(s)"),
    ("no-id", "lacks column(s) ['id']"),
    ("duplicate-ids", "duplicate ids in catalog: 'i0'"),
    ("empty-group", "group column 'pid' is empty for 1 item(s) (ids 'i2')"),
    ("not-utf8", "not UTF-8 text"),
]


@pytest.mark.parametrize("change, message", BAD_INPUT, ids=[c for c, _ in BAD_INPUT])
def test_cli_bad_input_is_one_clear_line(tmp_path: Path, change: str, message: str) -> None:
    """Each bad input (the real command, in a process): exit 2 and one line that says what is
    wrong, never a traceback; "ok" is the same catalog unchanged, which builds."""
    img = write_image(tmp_path / "a.png")
    rows = []
    for k in range(8):                     # one image per row: a repeated one would be skipped
        (tmp_path / f"{k}.png").write_bytes(img.read_bytes())
        rows.append({"id": f"i{k}", "image": str(tmp_path / f"{k}.png"), "pid": f"p{k // 2}",
                     "neck": ("round", "v")[k % 2]})
    attrs = "neck"
    if change == "no-column":
        attrs = "neck,collar"
    elif change == "one-value":
        for row in rows:
            row["neck"] = "round"
    elif change == "no-id":
        rows = [{k: v for k, v in row.items() if k != "id"} for row in rows]
    elif change == "duplicate-ids":
        rows[1]["id"] = rows[0]["id"]
    elif change == "empty-group":
        rows[2]["pid"] = " "
    cat = _catalog(tmp_path, rows)
    if change == "not-utf8":
        cat.write_bytes(cat.read_bytes().replace(b"round", b"r\xf6und"))
    r = _cli("--catalog", str(cat), "--attributes", attrs,
             "--group-by", "pid", "--out", str(tmp_path / "out"), "--min-per-value", "1")
    if change == "ok":
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out" / "dataset_report.json").is_file()
        return
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "dataset_report.json").exists()
