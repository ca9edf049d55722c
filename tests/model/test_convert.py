"""model/convert.py on project checkpoints, and `--attributes` parsing (model/attributes.py).
Published checkpoints through it: tests/indexer/test_published_checkpoint.py."""

from __future__ import annotations

import pytest
from testkit import tiny_checkpoint

from model.attributes import parse_attributes_option, resolve_attributes
from model.convert import is_published, self_describing
from model.errors import CheckpointError


def test_a_project_checkpoint_is_used_as_it_is(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "own.pt", [("collar", 3), ("colour", 2)])
    assert not is_published(ckpt)
    assert self_describing(ckpt, None, tmp_path / "copies") == ckpt
    assert self_describing(ckpt, ["collar", "colour"], tmp_path / "copies") == ckpt
    with pytest.raises(CheckpointError, match=r"names its attributes \['collar', 'colour'\]"):
        self_describing(ckpt, "FashionAI", tmp_path / "copies")
    assert not (tmp_path / "copies").exists()
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        self_describing(tmp_path / "missing.pth.tar", "FashionAI", tmp_path / "copies")


def test_attributes_option():
    assert parse_attributes_option("FashionAI") == "FashionAI"
    assert resolve_attributes(parse_attributes_option("fashionai"))[0].name == "skirt_length"
    assert parse_attributes_option("collar, colour") == ["collar", "colour"]
    assert parse_attributes_option("collar,") == ["collar"]
    with pytest.raises(ValueError, match="not a built-in attribute set"):
        parse_attributes_option("FashionIA")
    with pytest.raises(ValueError, match="no attribute names"):
        parse_attributes_option(",")
