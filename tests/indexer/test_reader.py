"""Opening an index (indexer/reader.py): missing and unreadable folders are refused."""

from __future__ import annotations

import faiss
import pytest

from indexer.reader import CatalogIndex


def test_reader_rejects_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        CatalogIndex.open(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError):
        CatalogIndex.open(tmp_path / "bad")
    assert faiss.get_num_gpus() >= 0
