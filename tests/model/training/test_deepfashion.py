"""The DeepFashion reader (model/training/deepfashion.py) on small files in the official format:
parsing, the one-value-per-type rule, the partition (val -> valid), the value order, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit import write_image

from model.training import deepfashion as df
from model.training.data import load_split, read_attributes

# name, type: two of each type but shape, which has three (one name with spaces and a single
# space before its type, one repeated)
CLOTH = [("floral", 1), ("abstract chevron print", 1), ("denim", 2), ("cotton", 2), ("a-line", 3),
         ("maxi  length", 3), ("A-Line", 3), ("v-neck", 4), ("peplum", 4), ("boho", 5), ("chic", 5)]


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _cloth_lines(cloth: list[tuple[str, int]]) -> list[str]:
    return [str(len(cloth)), "attribute_name  attribute_type"] + [
        f"{n}{' ' if len(n) > 15 else ' ' * (28 - len(n))}{t}" for n, t in cloth]


def _labels(positive: set[int], n: int = len(CLOTH), unknown: frozenset[int] = frozenset()) -> str:
    return " ".join("1" if i in positive else "0" if i in unknown else "-1" for i in range(n))


# image -> (positive columns, official partition)
IMAGES = {
    "img/Floral_Dress/img_00000001.jpg": ({0, 2, 4, 7, 9}, "train"),  # the first of each type
    "img/Floral_Dress/img_00000002.jpg": ({0, 1, 8}, "train"),        # two textures; peplum
    "img/Chevron_Top/img_00000001.jpg": ({1, 3, 5, 10}, "val"),       # the second of four types
    "img/Chevron_Top/img_00000002.jpg": ({6}, "test"),                # shape "A-Line (2)"
    "img/Chevron_Top/img_00000003.jpg": (set(), "test"),         # nothing positive: no record
}


def _benchmark(root: Path, images: dict = IMAGES, anno: str = "Anno") -> Path:
    _write(root / anno / "list_attr_cloth.txt", _cloth_lines(CLOTH))
    rows = [f"{p}   {_labels(pos, unknown=frozenset({10}) - pos)}"
            for p, (pos, _) in images.items()]
    _write(root / anno / "list_attr_img.txt",
           [str(len(images)), "image_name  attribute_labels", *rows])
    _write(root / "Eval" / "list_eval_partition.txt",
           [str(len(images)), "image_name  evaluation_status"]
           + [f"{p}    {split}" for p, (_, split) in images.items()])
    return root


def test_attribute_list_types_and_value_order(tmp_path: Path) -> None:
    cloth = df.read_attribute_list(_benchmark(tmp_path) / "Anno" / "list_attr_cloth.txt")
    assert [(a.name, a.type_id) for a in cloth] == [(" ".join(n.split()), t) for n, t in CLOTH]
    types = df.type_values(cloth)
    assert [t.name for t in types] == ["texture", "fabric", "shape", "part", "style"]
    shape = types[2]
    # file order; spaces collapsed; a name repeated (case-folded) within a type keeps its own id
    assert shape.values == ("a-line", "maxi length", "A-Line (2)") and shape.columns == (4, 5, 6)
    assert types[0].values == ("floral", "abstract chevron print")
    with pytest.raises(df.DeepFashionError, match=r"type\(s\) \[6\] have no name"):
        df.type_values([*cloth, df.ClothAttribute("loose", 6)])
    named = df.type_values([*cloth, df.ClothAttribute("loose", 6)], {**df.TYPE_NAMES, 6: "fit"})
    assert named[-1].name == "fit" and named[-1].values == ("loose",)


def test_one_value_per_type_rule() -> None:
    types = df.type_values([df.ClothAttribute(n, t) for n, t in CLOTH])
    labels, outcome = df.one_value_per_type([0, 3, 4], types)
    assert labels == {"texture": "floral", "fabric": "cotton", "shape": "a-line"}
    assert outcome == {"texture": "labelled", "fabric": "labelled", "shape": "labelled",
                       "part": "none", "style": "none"}
    labels, outcome = df.one_value_per_type([8, 1, 0], types)           # two textures
    assert labels == {"part": "peplum"} and outcome["texture"] == "several"
    labels, _ = df.one_value_per_type([8, 1, 0], types, multi="first")  # first in list order
    assert labels == {"texture": "floral", "part": "peplum"}


def test_matrix_reads_only_1_as_positive(tmp_path: Path) -> None:
    root = _benchmark(tmp_path)
    rows = list(df.read_attribute_matrix(root / "Anno" / "list_attr_img.txt", len(CLOTH)))
    assert [(line, path) for line, path, _ in rows][:2] == [
        (3, "img/Floral_Dress/img_00000001.jpg"), (4, "img/Floral_Dress/img_00000002.jpg")]
    assert [set(pos) for _, _, pos in rows] == [pos for pos, _ in IMAGES.values()]


def test_partition_maps_val_to_valid(tmp_path: Path) -> None:
    part = df.read_partition(_benchmark(tmp_path) / "Eval" / "list_eval_partition.txt")
    assert list(part.values()) == ["train", "train", "valid", "test", "test"]
    bad = _write(tmp_path / "bad.txt", ["2", "image_name evaluation_status",
                                        "img/a.jpg train", "img/b.jpg gallery"])
    with pytest.raises(df.DeepFashionError, match=r"bad.txt:4: unknown evaluation status 'galle"):
        df.read_partition(bad)


@pytest.mark.parametrize(("lines", "n", "message"), [
    (["3", "image_name attribute_labels", "img/a.jpg 1 -1", "img/b.jpg -1 1"], 2,
     r"line 1 declares 3 entries, the file has 2"),
    (["2", "image_name attribute_labels", "img/a.jpg 1 -1", "img/b.jpg -1"], 2,
     r":4: 1 labels for img/b.jpg, list_attr_cloth.txt has 2 attributes"),
    (["1", "image_name attribute_labels", "img/a.jpg 1 2"], 2, r":3: label '2' is not 1, -1 or 0"),
    (["1", "img/a.jpg 1 -1"], 2, r":2: expected the header line 'image_name \.\.\.'"),
    (["image_name attribute_labels", "img/a.jpg 1 -1"], 2, r":1: expected the number of entries"),
    ([], 2, r"empty file"),
])
def test_bad_attribute_files(tmp_path: Path, lines: list[str], n: int, message: str) -> None:
    path = _write(tmp_path / "list_attr_img.txt", lines)
    with pytest.raises(df.DeepFashionError, match=message):
        list(df.read_attribute_matrix(path, n))


def test_bad_attribute_list(tmp_path: Path) -> None:
    path = _write(tmp_path / "list_attr_cloth.txt",
                  ["2", "attribute_name attribute_type", "floral 1", "denim fabric"])
    with pytest.raises(df.DeepFashionError, match=r"list_attr_cloth.txt:4: expected '<attribute"):
        df.read_attribute_list(path)


def test_convert_writes_the_published_layout(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = _benchmark(tmp_path / "bench", anno="Anno_coarse")
    for i, path in enumerate(IMAGES):
        write_image(root / "Img" / path, (40 * i, 90, 160))          # img.zip unpacked in Img/
    out = tmp_path / "out"
    assert df.main(["--root", str(root), "--out", str(out), "--query-frac", "0.5"]) == 0
    attrs = json.loads((out / "attributes.json").read_text())
    assert [(a["name"], a["n_values"]) for a in attrs] == [
        ("texture", 2), ("fabric", 2), ("shape", 3), ("part", 2), ("style", 2)]
    assert attrs[2]["values"] == ["a-line", "maxi length", "A-Line (2)"]
    assert [a.name for a in read_attributes(out)] == [a["name"] for a in attrs]
    got = {}
    for split in ("train", "valid", "test"):
        s = load_split(out, split)
        rel = [p.relative_to(root / "Img").as_posix() for p in s.image_paths]
        if split == "train":
            labels = {rel[i]: dict(v) for i, v in s.labels.items()}
        else:
            labels = {}
            for i, a, v in s.queries + s.candidates:
                labels.setdefault(rel[i], {})[a] = v
        got.update({p: (split, lab) for p, lab in labels.items()})
    assert got == {  # attribute index -> value id; the official partition, val -> valid
        "img/Floral_Dress/img_00000001.jpg": ("train", {0: 0, 1: 0, 2: 0, 3: 0, 4: 0}),
        "img/Floral_Dress/img_00000002.jpg": ("train", {3: 1}),
        "img/Chevron_Top/img_00000001.jpg": ("valid", {0: 1, 1: 1, 2: 1, 4: 1}),
        "img/Chevron_Top/img_00000002.jpg": ("test", {2: 2}),
    }
    printed = capsys.readouterr()
    assert "texture: 2 images with one positive attribute, 1 with several (left unlabelled), " \
        "2 with none" in printed.out
    assert "values per type texture 2, fabric 2, shape 3" in printed.err   # not 156, 218, ...
    report = json.loads((out / "dataset_report.json").read_text())
    assert report["problems"] == [
        "texture: 1 images with several positive texture attributes left unlabelled for texture"]


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert df.main(["--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no Anno/list_attr_img.txt" in capsys.readouterr().err
    _write(tmp_path / "Anno_fine" / "list_attr_img.txt", ["0", "image_name attribute_labels"])
    assert df.main(["--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "only Anno_fine/" in err and err.count("\n") == 1
    root = _benchmark(tmp_path / "b")
    _write(root / "Eval" / "list_eval_partition.txt", ["1", "image_name evaluation_status",
                                                        "img/x.jpg holdout"])
    assert df.main(["--root", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "unknown evaluation status 'holdout'" in capsys.readouterr().err


def test_fine_subset_with_its_split_lists(tmp_path: Path) -> None:
    """Anno_fine/: 0/1 labels, the partition in train.txt / val.txt / test.txt, types named."""
    root = tmp_path / "bench"
    images = {p: pos for p, (pos, _) in IMAGES.items()}
    _write(root / "Anno_fine" / "list_attr_cloth.txt", _cloth_lines(CLOTH))
    _write(root / "Anno_fine" / "list_attr_img.txt", [str(len(images)), "image_name labels"]
           + [f"{p} " + " ".join("1" if i in pos else "0" for i in range(len(CLOTH)))
              for p, pos in images.items()])
    for stem, split in (("train", "train"), ("val", "val"), ("test", "test")):
        _write(root / "Anno_fine" / f"{stem}.txt",
               [p for p, (_, s) in IMAGES.items() if s == split])
    for i, path in enumerate(IMAGES):
        write_image(root / path, (40 * i, 90, 160))
    out = tmp_path / "out"
    assert df.main(["--root", str(root), "--anno", str(root / "Anno_fine"), "--out", str(out),
                    "--type-names", "pattern,fabric,shape,neckline,fit",
                    "--no-check-images"]) == 0
    assert [a.name for a in read_attributes(out)] == ["pattern", "fabric", "shape", "neckline",
                                                      "fit"]
    assert len(load_split(out, "valid")) == 1 and len(load_split(out, "test")) == 1


def test_the_published_value_counts_give_no_warning() -> None:
    counts = [156, 218, 180, 216, 230]
    cloth = [df.ClothAttribute(f"a{t}-{k}", t + 1) for k in range(230) for t in range(5)
             if k < counts[t]]                                   # the types interleaved
    types = df.type_values(cloth)
    assert [len(t.values) for t in types] == counts and df.published_check(types) == []
    assert types[0].values[:2] == ("a0-0", "a0-1") and types[4].columns[:2] == (4, 9)
    assert "style 229 differ" in df.published_check(df.type_values(cloth[:-1]))[0]
