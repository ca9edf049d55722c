"""The authors' split archive: ``data/meta.json`` beside ``data/FashionAI/`` (keyed by dataset
name; each entry ``ATTRIBUTES``, ``ATTRIBUTES_NUM``, ``ATTRIBUTES_VALUES``, as the AAAI-2020
code's ``MetaLoader`` reads it), a per-folder unkeyed ``meta.json``, and ``model.evaluate``
on a folder that describes no attributes, given ``--attributes FashionAI``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit import synthetic_dataset, tiny_checkpoint
from testkit.published import published_checkpoint

from model.attributes import BUILTIN_ATTRIBUTES, AttributeSpec
from model.training.data import DataError, find_attributes, load_split, read_attributes
from model.training.evaluate import main

FASHIONAI = list(BUILTIN_ATTRIBUTES["FashionAI"])


def meta_entry(specs: list[AttributeSpec], with_values: bool = True) -> dict:
    """One dataset's entry in the authors' format."""
    entry: dict = {"ATTRIBUTES": [a.name for a in specs],
                   "ATTRIBUTES_NUM": {a.name: a.n_values for a in specs}}
    if with_values:
        entry["ATTRIBUTES_VALUES"] = {a.name: [f"v{i}" for i in range(a.n_values)]
                                      for a in specs}
    return entry


def authors_archive(root: Path) -> Path:
    """data/{FashionAI,DARN}/ and data/meta.json with both entries; returns data/."""
    for name in ("FashionAI", "DARN"):
        (root / name).mkdir(parents=True)
    darn = list(BUILTIN_ATTRIBUTES["DARN"])
    (root / "meta.json").write_text(json.dumps(
        {"FashionAI": meta_entry(FASHIONAI), "DARN": meta_entry(darn, with_values=False)},
        indent="\t"))
    return root


def test_meta_json_of_the_archive_root(tmp_path):
    data = authors_archive(tmp_path / "data")
    assert read_attributes(data / "FashionAI") == FASHIONAI
    assert read_attributes(data / "DARN") == list(BUILTIN_ATTRIBUTES["DARN"])
    # the folder's name selects the entry, case-insensitively (the AAAI code's "fashionAI")
    (data / "FashionAI").rename(data / "fashionai")
    assert read_attributes(data / "fashionai") == FASHIONAI


def test_meta_json_without_the_folders_entry(tmp_path):
    data = authors_archive(tmp_path / "data")
    (data / "DeepFashion").mkdir()
    with pytest.raises(DataError, match=r"no entry for the dataset 'DeepFashion'.*FashionAI, DARN"):
        read_attributes(data / "DeepFashion")


def test_another_tools_meta_json_in_the_parent_is_ignored(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "meta.json").write_text(json.dumps({"version": 3, "files": {"a": 1}}))
    assert find_attributes(tmp_path / "d") is None
    (tmp_path / "meta.json").write_text("not json")
    assert find_attributes(tmp_path / "d") is None


def test_meta_json_in_the_dataset_folder(tmp_path):
    """The AAAI release's per-folder file (unkeyed), or a keyed one copied into the folder."""
    folder = tmp_path / "fashionAI"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps(meta_entry(FASHIONAI)))
    assert read_attributes(folder) == FASHIONAI
    (folder / "meta.json").write_text(json.dumps({"FashionAI": meta_entry(FASHIONAI)}))
    assert read_attributes(folder) == FASHIONAI
    # the folder's own description comes before the archive's
    (tmp_path / "meta.json").write_text(json.dumps({"fashionAI": meta_entry(FASHIONAI[:2])}))
    assert read_attributes(folder) == FASHIONAI


@pytest.mark.parametrize("entry, message", [
    ({"ATTRIBUTES": "collar"}, "'ATTRIBUTES' must be a list"),
    ({"ATTRIBUTES": ["collar"]}, "attribute 'collar': no positive value count"),
    ({"ATTRIBUTES": ["collar"], "ATTRIBUTES_NUM": {"collar": 0}}, "no positive value count"),
    ({"ATTRIBUTES": ["collar"], "ATTRIBUTES_NUM": {"collar": 3},
      "ATTRIBUTES_VALUES": {"collar": ["a", "b"]}}, "2 value names for ATTRIBUTES_NUM 3"),
    ({"ATTRIBUTES": ["a", "a"], "ATTRIBUTES_NUM": {"a": 2}}, "duplicate attribute names"),
])
def test_meta_json_errors_name_the_file(tmp_path, entry, message):
    (tmp_path / "FashionAI").mkdir()
    (tmp_path / "meta.json").write_text(json.dumps({"FashionAI": entry}))
    with pytest.raises(DataError, match=message) as err:
        read_attributes(tmp_path / "FashionAI")
    assert str(tmp_path / "meta.json") in str(err.value)


def test_value_counts_from_the_value_names(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "meta.json").write_text(json.dumps(
        {"ATTRIBUTES": ["collar"], "ATTRIBUTES_VALUES": {"collar": ["a", "b", "c"]}}))
    assert read_attributes(tmp_path / "d") == [AttributeSpec("collar", 3)]


def test_no_description_at_all(tmp_path):
    assert find_attributes(tmp_path) is None
    with pytest.raises(DataError, match=r"meta.json.*--attributes FashionAI"):
        read_attributes(tmp_path)


# ------------------------------------------------------------ model.evaluate on such folders
@pytest.fixture(scope="module")
def fashionai_folder(tmp_path_factory) -> Path:
    """A synthetic dataset laid out as the authors' data/FashionAI/: no attributes.json, the
    labels' attribute indices and values within FashionAI's (the synthetic 6 attributes have
    4 values each, FashionAI's first 6 at least 5)."""
    root = tmp_path_factory.mktemp("archive") / "data" / "FashionAI"
    synthetic_dataset(root, seed=0, n_train=4, n_valid=4, n_test=12)
    (root / "attributes.json").unlink()
    return root


def _evaluate(data: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return main(["--data", str(data), "--checkpoint", str(ckpt), "--device", "cpu",
                 "--json", str(out), *extra])


def test_evaluate_with_a_builtin_set_and_no_description(fashionai_folder, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "fashionai.pt", FASHIONAI)
    out = tmp_path / "report.json"
    assert _evaluate(fashionai_folder, ckpt, out) == 1
    err = capsys.readouterr().err
    assert "meta.json" in err and "--attributes" in err and "Traceback" not in err
    assert _evaluate(fashionai_folder, ckpt, out, "--attributes", "FashionAI") == 0
    report = json.loads(out.read_text())
    assert set(report["per_attribute"]) <= {a.name for a in FASHIONAI}
    assert sum(report["counts"]["queries"].values()) == len(
        load_split(fashionai_folder, "test", attributes=FASHIONAI).queries)


def test_evaluate_reads_the_archive_meta_json(fashionai_folder, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "fashionai.pt", FASHIONAI)
    meta = fashionai_folder.parent / "meta.json"
    meta.write_text(json.dumps({"FashionAI": meta_entry(FASHIONAI)}))
    try:
        assert _evaluate(fashionai_folder, ckpt, tmp_path / "a.json") == 0
        # --attributes naming other attributes than the meta.json's is refused
        assert _evaluate(fashionai_folder, ckpt, tmp_path / "b.json", "--attributes", "DARN") == 1
    finally:
        meta.unlink()


def test_evaluate_a_published_checkpoint(fashionai_folder, tmp_path, capsys):
    """README: `python -m model.evaluate --data data/FashionAI --checkpoint
    fashionai_asenpp.pth.tar --attributes FashionAI` (a stand-in checkpoint)."""
    ckpt = published_checkpoint(tmp_path / "fashionai_asenpp.pth.tar")
    out = tmp_path / "report.json"
    assert _evaluate(fashionai_folder, ckpt, out, "--attributes", "FashionAI", "--limit", "1",
                     "--loc-limit", "0") == 0
    assert json.loads(out.read_text())["dim"] == 1024
    assert _evaluate(fashionai_folder, ckpt, out, "--attributes", "FashionIA") == 1
    assert "not a built-in attribute set" in capsys.readouterr().err
