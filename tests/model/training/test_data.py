"""Loaders of the published layout (model/training/data.py) and triplet sampling."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from testkit import write_image

from model.attributes import BUILTIN_ATTRIBUTES, AttributeSpec
from model.training.data import (
    DataError,
    TripletSampler,
    load_split,
    read_attributes,
)


def _dataset(root: Path, n_train: int = 6, n_test: int = 5) -> Path:
    """A tiny hand-written dataset: 2 attributes (3 and 2 values)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "attributes.json").write_text(json.dumps(
        [{"name": "collar", "n_values": 3}, {"name": "colour", "n_values": 2}]))
    for split, n in (("train", n_train), ("valid", n_test), ("test", n_test)):
        names = [f"img/{split}/{i}.png" for i in range(n)]
        for name in names:
            write_image(root / name)
        (root / f"filenames_{split}.txt").write_text("\n".join(names) + "\n")
    (root / "label_train.txt").write_text(
        "".join(f"{i} 0 {i % 3} 1 {i % 2}\n" for i in range(n_train)))
    for split in ("valid", "test"):
        (root / f"query_{split}.txt").write_text("0 0 0\n1 1 1\n")
        (root / f"candidate_{split}.txt").write_text(
            "".join(f"{i} {i % 2} {i % 2}\n" for i in range(2, n_test)))
    return root


# ------------------------------------------------------------------ attributes


def test_read_attributes_formats(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "d")
    assert read_attributes(root) == [AttributeSpec("collar", 3), AttributeSpec("colour", 2)]
    txt = tmp_path / "t"
    txt.mkdir()
    (txt / "attributes.txt").write_text("# name n_values\nskirt_length 6\nsleeve_length 9\n")
    assert read_attributes(txt) == [AttributeSpec("skirt_length", 6),
                                    AttributeSpec("sleeve_length", 9)]
    (txt / "attributes.txt").write_text("FashionAI\n")
    assert read_attributes(txt) == list(BUILTIN_ATTRIBUTES["FashionAI"])
    assert read_attributes("DARN") == list(BUILTIN_ATTRIBUTES["DARN"])


def test_read_attributes_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="attributes.json or attributes.txt"):
        read_attributes(tmp_path)
    (tmp_path / "attributes.txt").write_text("collar 3\nsleeve many\n")
    with pytest.raises(DataError, match=r"attributes.txt:2: expected 'name n_values'"):
        read_attributes(tmp_path)
    (tmp_path / "attributes.json").write_text('[{"name": "a"}]')
    with pytest.raises(DataError, match="attribute #0"):
        read_attributes(tmp_path)


# ------------------------------------------------------------------ splits


def test_load_split(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "d")
    train = load_split(root, "train")
    assert len(train) == 6 and all(p.is_absolute() and p.is_file() for p in train.image_paths)
    assert train.labels[4] == {0: 1, 1: 0}
    test = load_split(root, "test")
    assert test.queries == [(0, 0, 0), (1, 1, 1)]
    assert test.candidates[0] == (2, 0, 0) and len(test.candidates) == 3
    assert test.labels[1] == {1: 1}


@pytest.mark.parametrize("file,content,message", [
    ("label_train.txt", "0 0 1 1 0\n9 0 1\n", r"label_train.txt:2: image id 9 out of range"),
    ("label_train.txt", "0 2 1\n", r"label_train.txt:1: attribute index 2 out of range"),
    ("label_train.txt", "0 0 3\n", r"label_train.txt:1: value 3 out of range .*'collar'"),
    ("label_train.txt", "0 0 x\n", r"label_train.txt:1: non-integer"),
    ("label_train.txt", "0 0\n", r"label_train.txt:1: expected"),
    ("query_test.txt", "0 0 0 1 1\n", r"query_test.txt:1: expected 'image_id attr value'"),
    ("candidate_test.txt", "0 1 2\n", r"candidate_test.txt:1: value 2 out of range"),
])
def test_load_split_reports_bad_lines(tmp_path: Path, file: str, content: str,
                                      message: str) -> None:
    root = _dataset(tmp_path / "d")
    (root / file).write_text(content)
    split = "train" if file == "label_train.txt" else "test"
    with pytest.raises(DataError, match=message):
        load_split(root, split)


def test_load_split_missing_files(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "d")
    (root / "filenames_valid.txt").unlink()
    with pytest.raises(DataError, match=r"filenames_valid.txt: no such file"):
        load_split(root, "valid")
    (root / "img/test/3.png").unlink()
    with pytest.raises(DataError, match=r"1 image file\(s\) missing: .*3.png"):
        load_split(root, "test")
    assert len(load_split(root, "test", check_files=False)) == 5
    with pytest.raises(DataError, match="unknown split"):
        load_split(root, "dev")


def test_image_root_under_images_folder(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "d")
    (root / "images").mkdir()
    (root / "img").rename(root / "images" / "img")
    assert load_split(root, "train").image_paths[0] == root / "images/img/train/0.png"


# ------------------------------------------------------------------ triplets


def test_triplet_sampler_obeys_the_rule() -> None:
    rng = np.random.default_rng(0)
    labels = {i: {0: int(rng.integers(4)), 1: int(rng.integers(2)), 2: 0} for i in range(60)}
    labels[60] = {3: 1}  # attribute 3 has a single image: unusable
    sampler = TripletSampler(labels, n_attrs=4)
    assert sampler.attributes == [0, 1]  # attribute 2 has a single value
    t = sampler.sample(4000, np.random.default_rng(1))
    for a, p, n, attr in t:
        assert a != p
        assert labels[a][attr] == labels[p][attr] != labels[n][attr]
    counts = Counter(t[:, 3].tolist())
    assert set(counts) == {0, 1} and abs(counts[0] - counts[1]) < 300
    pairs = Counter((labels[a][0], labels[n][0]) for a, _, n, attr in t if attr == 0)
    assert len(pairs) == 12  # every ordered pair of different values occurs
    again = sampler.sample(4000, np.random.default_rng(1))
    assert np.array_equal(t, again)


def test_triplet_sampler_attribute_weights() -> None:
    rng = np.random.default_rng(0)
    labels = {i: {0: int(rng.integers(4)), 1: int(rng.integers(2)), 2: int(rng.integers(3))}
              for i in range(60)}
    sampler = TripletSampler(labels, n_attrs=3)
    t = sampler.sample(6000, np.random.default_rng(1), weights=[0.3, 0.0, 0.1])
    counts = Counter(t[:, 3].tolist())
    assert set(counts) == {0, 2}                      # a weight of 0: never picked
    assert 2.6 < counts[0] / counts[2] < 3.4          # otherwise in proportion
    for a, p, n, attr in t:
        assert a != p and labels[a][attr] == labels[p][attr] != labels[n][attr]
    with pytest.raises(ValueError, match="weights"):
        sampler.sample(10, np.random.default_rng(1), weights=[0.0, 0.0, 0.0])


def test_triplet_sampler_without_usable_attribute() -> None:
    with pytest.raises(DataError, match="no attribute"):
        TripletSampler({0: {0: 1}, 1: {0: 1}}, n_attrs=1)
