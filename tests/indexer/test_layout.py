"""The index folder's layout (indexer/layout.py): publishing swaps and prunes versions, a
plain folder is migrated, one writer at a time."""

from __future__ import annotations

import os

import pytest

from indexer.layout import IndexLayout, IndexLockedError


def test_publish_swaps_and_prunes(tmp_path):
    layout = IndexLayout(tmp_path / "idx")
    seen = []
    with layout:
        for k in range(4):
            stage = layout.staging(f"v{k}")
            (stage / "manifest.json").write_text(str(k))
            layout.publish(stage, f"v{k}")
            seen.append((tmp_path / "idx" / "manifest.json").read_text())
    assert seen == ["0", "1", "2", "3"]
    assert os.readlink(tmp_path / "idx") == os.path.join(".idx.versions", "v3")
    assert sorted(p.name for p in layout.versions.iterdir()) == ["v2", "v3"]


def test_plain_folder_is_migrated(tmp_path):
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "manifest.json").write_text("old")
    layout = IndexLayout(tmp_path / "idx")
    with layout:
        stage = layout.staging("v1")
        (stage / "manifest.json").write_text("new")
        layout.publish(stage, "v1")
    assert (tmp_path / "idx").is_symlink()
    assert (tmp_path / "idx" / "manifest.json").read_text() == "new"
    assert len([p for p in layout.versions.iterdir() if p.name.startswith("legacy-")]) == 1


def test_one_writer_at_a_time(tmp_path):
    a, b = IndexLayout(tmp_path / "idx"), IndexLayout(tmp_path / "idx")
    with a, pytest.raises(IndexLockedError):
        b.lock()
    b.lock()
    b.unlock()
