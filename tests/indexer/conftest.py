"""Fixtures of the indexer tests: a small synthetic dataset and a random tiny checkpoint to
index (built once per run, read-only), and a private copy of the dataset for each test.

The tests of indexer/embed/ and indexer/live/ are in folders of those names; those of
indexer/build/ are test_build_*.py here, since git (.gitignore), pytest (norecursedirs) and
ruff (its default excludes) all skip folders named build.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from testkit import synthetic_dataset, tiny_checkpoint

from model import load_model
from model.embedder import Embedder


@dataclass(frozen=True)
class SmallDataset:
    """28 synthetic images of 64 px (20 train, 4 valid, 4 test) listed in ``catalog``, a
    random tiny checkpoint for their attributes and its embedder."""

    data: Path
    checkpoint: Path
    embedder: Embedder

    @property
    def catalog(self) -> Path:
        return self.data / "catalog.csv"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SmallDataset:
    """The small dataset, its checkpoint and embedder (shared: never write into it)."""
    root = tmp_path_factory.mktemp("indexer-dataset")
    data = synthetic_dataset(root / "data", seed=3, n_train=20, n_valid=4, n_test=4)
    checkpoint = tiny_checkpoint(root / "tiny.pt", data)
    return SmallDataset(data, checkpoint, load_model(checkpoint, device="cpu"))


@pytest.fixture
def catalog(dataset: SmallDataset, tmp_path: Path) -> Path:
    """A private copy of the small dataset (the test may change it); its catalog.csv."""
    shutil.copytree(dataset.data, tmp_path / "data")
    return tmp_path / "data" / "catalog.csv"
