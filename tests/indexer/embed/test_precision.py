"""`--precision auto` (the indexer's default): resolved before the job key, so a re-run on
the same kind of machine reuses the store, and recorded in store.json and the manifest. The
CPU's flags are substituted, so both kinds of host are tested on either."""

from __future__ import annotations

import json

import pytest
from testkit import build_index, embed_catalog, index_catalog, subset_catalog

import model.precision as mp
from indexer.cli import EXIT_OK, EXIT_USAGE
from indexer.reader import CatalogIndex
from model.embedder import Embedder
from model.precision import CpuBf16


@pytest.fixture
def small(catalog):
    return subset_catalog(catalog, catalog.with_name("small.csv"), 6)


def _host(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """A CPU with (or without) native bf16; the start-up check (tests/model) passes."""
    monkeypatch.setattr(mp, "cpu_bf16_support", lambda: CpuBf16(native, "test"))
    monkeypatch.setattr(Embedder, "_cosine_to_fp32", lambda self, precision: 0.99995)


def test_auto_is_recorded_and_a_rerun_reuses_the_store(dataset, small, tmp_path, monkeypatch,
                                                       capsys):
    _host(monkeypatch, native=True)
    emb_dir = tmp_path / "emb"
    assert embed_catalog(small, dataset.checkpoint, emb_dir, "--precision", "auto") == EXIT_OK
    store = json.loads((emb_dir / "store.json").read_text())
    assert store["model"]["precision"] == "bf16"
    assert store["model"]["precision_choice"] == {
        "requested": "auto", "chosen": "bf16", "cosine": 0.99995,
        "reason": "native bf16 on this CPU: test; start-up check: bf16 cosine to fp32 "
                  "0.999950 >= 0.999"}
    assert embed_catalog(small, dataset.checkpoint, emb_dir, "--precision", "auto") == EXIT_OK
    last = json.loads((emb_dir / "store.json").read_text())["last_run"]
    assert (last["computed"], last["cached"]) == (0, 6)
    # fp32 vectors are another job: never mixed into the bf16 store
    assert embed_catalog(small, dataset.checkpoint, emb_dir, "--precision", "fp32") == EXIT_USAGE
    assert "another model, precision" in capsys.readouterr().err

    for extra in ((), ("--checkpoint", str(dataset.checkpoint))):   # a build keeps it
        out = tmp_path / f"idx{len(extra)}"
        assert build_index(emb_dir, small, out, *extra) == EXIT_OK
        with CatalogIndex.open(out) as idx:
            assert idx.manifest.model.precision == "bf16"
            choice = idx.manifest.model.precision_choice
            assert choice is not None and (choice.requested, choice.chosen) == ("auto", "bf16")


def test_auto_without_native_bf16_is_fp32(dataset, small, tmp_path, monkeypatch):
    _host(monkeypatch, native=False)
    out = tmp_path / "idx"
    assert index_catalog(small, dataset.checkpoint, out, "--precision", "auto") == EXIT_OK
    model = json.loads((out / "manifest.json").read_text())["model"]
    assert model["precision"] == "fp32"
    assert model["precision_choice"] == {"requested": "auto", "chosen": "fp32", "cosine": None,
                                         "reason": "no native bf16 on this CPU: test"}
