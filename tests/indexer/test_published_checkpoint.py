"""A published checkpoint (the authors' `{"epoch", "model", "mAP"}` file, which names no
attributes) through the commands that load by path: `python -m indexer --attributes`,
`python -m model.convert` and the demo's `--attributes` (model/convert.py does the work)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from testkit import REPO_ROOT, write_image, write_rows
from testkit.published import published_checkpoint

from indexer.cli import main as indexer_main
from model import load_model
from model.attributes import BUILTIN_ATTRIBUTES
from model.convert import main as convert_main

FASHIONAI = [a.name for a in BUILTIN_ATTRIBUTES["FashionAI"]]


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    return published_checkpoint(tmp_path_factory.mktemp("pub") / "fashionai_asenpp.pth.tar")


@pytest.fixture
def catalog(tmp_path) -> Path:
    rows = [{"id": f"item-{i}", "image": f"img/{i}.jpg"} for i in range(2)]
    for i in range(2):
        write_image(tmp_path / "shop" / "img" / f"{i}.jpg", (60 * i, 90, 200), (40, 56))
    write_rows(tmp_path / "shop" / "catalog.csv", rows)
    return tmp_path / "shop" / "catalog.csv"


def _index(catalog: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    return indexer_main(["--catalog", str(catalog), "--checkpoint", str(checkpoint),
                         "--out", str(out), "--no-progress", "--workers", "0", *extra])


def test_indexer_refuses_it_without_attributes(published, catalog, tmp_path, capsys):
    assert _index(catalog, published, tmp_path / "idx") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--attributes" in err and "python -m model.convert" in err
    assert not (tmp_path / "idx").exists()


def test_indexer_with_attributes(published, catalog, tmp_path):
    out = tmp_path / "idx"
    assert _index(catalog, published, out, "--attributes", "FashionAI") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    copy = Path(manifest["model"]["checkpoint"])
    assert copy.parent == tmp_path / ".idx.checkpoints" and copy.suffix == ".pt"
    assert [a["name"] for a in manifest["attributes"]] == FASHIONAI
    emb = load_model(copy, device="cpu")   # what the service does with the manifest's path
    assert emb.attribute_names == FASHIONAI and emb.dim == 1024
    stamp = copy.stat().st_mtime_ns
    # an update with the same file and set reuses the copy: the same model, nothing re-embedded
    assert _index(catalog, published, out, "--attributes", "FashionAI", "--update") == 0
    assert copy.stat().st_mtime_ns == stamp
    assert json.loads((out / "manifest.json").read_text())["model"]["checkpoint"] == str(copy)


def test_convert_command(published, tmp_path, capsys):
    out = tmp_path / "fashionai.pt"
    assert convert_main([str(published), "--attributes", "FashionAI", "--out", str(out)]) == 0
    assert load_model(out, device="cpu").attribute_names == FASHIONAI
    assert convert_main([str(out), "--attributes", "FashionAI", "--out", str(tmp_path / "x")]) == 2
    assert "already a project checkpoint" in capsys.readouterr().err
    assert convert_main([str(published), "--attributes", "DARN", "--out", str(tmp_path / "y")]) == 2
    assert "attr_embedding" in capsys.readouterr().err   # 9 attributes given, the file has 8


def _demo():
    path = REPO_ROOT / "scripts" / "demo.py"
    spec = importlib.util.spec_from_file_location("demo_script_pub", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_takes_attributes(published, tmp_path):
    demo = _demo()
    args = demo.build_parser().parse_args(["--workdir", str(tmp_path / "w"),
                                           "--checkpoint", str(published)])
    with pytest.raises(demo.DemoError) as err:
        demo.usable_checkpoint(args, published)
    assert err.value.code == 2 and "--attributes" in str(err.value)
    args.attributes = "FashionAI"
    copy = demo.usable_checkpoint(args, published)
    assert copy.parent == (tmp_path / "w" / "checkpoints").resolve()
    assert copy.name.startswith("fashionai_asenpp-") and copy.name.endswith("-FashionAI.pt")
