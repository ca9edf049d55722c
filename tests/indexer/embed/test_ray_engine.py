"""The Ray embedding engine (indexer/embed/ray_engine.py) against the local one: the same
store, the same rejects, the start-up and the steady rate, its workers and model threads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from testkit import append_broken_items, embed_catalog, read_rows

from indexer.cli import EXIT_OK
from indexer.embed.local_engine import available_cpus


def _store_contents(emb_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    table = pq.read_table(sorted(emb_dir.glob("*.parquet")))
    names = [c for c in table.column_names if c not in ("id", "sha256")]
    vecs = {i: np.stack([np.asarray(table.column(n)[k].as_py(), np.float32) for n in names])
            for k, i in enumerate(table.column("id").to_pylist())}
    rejects = {r["id"]: r["reason"] for r in read_rows(emb_dir / "rejected.csv")}
    return vecs, rejects


def test_ray_engine_equals_the_local_engine(dataset, catalog, tmp_path):
    rows = read_rows(catalog)
    append_broken_items(catalog, ["bad-empty", "bad-text", "bad-bomb", "bad-missing"])
    limits = ["--max-pixels", "1000000"]
    assert embed_catalog(catalog, dataset.checkpoint, tmp_path / "local", *limits) == EXIT_OK
    assert embed_catalog(catalog, dataset.checkpoint, tmp_path / "ray", *limits, "--engine",
                         "ray", "--ray-actors", "1") == EXIT_OK
    local_vecs, local_rej = _store_contents(tmp_path / "local")
    ray_vecs, ray_rej = _store_contents(tmp_path / "ray")
    assert sorted(ray_vecs) == sorted(local_vecs) == sorted(r["id"] for r in rows)
    assert ray_rej == local_rej == {"bad-empty": "empty", "bad-text": "not_an_image",
                                    "bad-bomb": "too_large", "bad-missing": "missing"}
    for i, v in local_vecs.items():
        np.testing.assert_allclose(ray_vecs[i], v, atol=1e-4)
    meta = json.loads((tmp_path / "ray" / "store.json").read_text())
    assert meta["last_run"]["engine"] == "ray" and meta["device"] == "cpu"
    for engine in ("local", "ray"):     # several batches of 8: a start-up and a steady rate
        run = json.loads((tmp_path / engine / "store.json").read_text())["last_run"]
        assert 0 < run["first_vectors_seconds"] < run["seconds"]
        assert run["steady_images_per_s"] > 0
    # the local engine runs the --workers it was given; Ray one decode task per CPU its one
    # actor leaves on this machine
    assert json.loads((tmp_path / "local" / "store.json").read_text())["last_run"]["workers"] == 1
    assert meta["last_run"]["workers"] == max(1, available_cpus() - 1)
    # Ray gives an actor with num_cpus=1 one OpenMP thread; its model must still get the
    # node's CPUs, as the local engine's model does
    assert meta["last_run"]["model_threads"] == [available_cpus()]


def test_ray_resolves_auto_where_its_actors_run(dataset):
    """`auto` is resolved by a task on the actors' kind of device (here the CPU, as this
    process resolves it), once per checkpoint; an explicit precision needs no task."""
    from indexer.embed.ray_engine import RayEngine
    from model import load_model
    from model.precision import explicit

    here = load_model(dataset.checkpoint, device="cpu", precision="auto").precision_choice
    with RayEngine(device="cpu") as engine:
        assert engine.resolve_precision(str(dataset.checkpoint), "bf16") == explicit("bf16")
        assert engine.resolve_precision(str(dataset.checkpoint), "auto") == here
        assert list(engine._precisions.values()) == [here]
