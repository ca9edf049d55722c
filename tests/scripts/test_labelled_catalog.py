"""scripts/labelled_catalog.py: the degraded catalog of the builder's measurement (blanked
labels, a rare value, broken images, products of 3 photos) and model.dataset on it."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from testkit import REPO_ROOT

from model.training.dataset import AttributeColumn, build_dataset, records_from_catalog
from model.training.synth import generate


def _script():  # noqa: ANN202 - a module object
    spec = importlib.util.spec_from_file_location(
        "labelled_catalog", REPO_ROOT / "scripts" / "labelled_catalog.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_labelled_catalog_then_builder(tmp_path: Path) -> None:
    synth = tmp_path / "synth"
    generate(synth, seed=5, n_train=48, n_valid=6, n_test=6, size=64, workers=1)
    out = tmp_path / "labelled"
    counts = _script().make_catalog(synth, out, seed=1, blank=0.3, rare=("colour", "red"),
                                    rare_count=2, broken=4, per_product=3)
    with open(out / "catalog.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert counts["rows"] == len(rows) == 64
    attrs = ["sleeve_length", "neckline", "hem_length", "button", "colour", "pattern"]
    cells = [r[a] for r in rows[:60] for a in attrs]
    assert 0.2 < cells.count("") / len(cells) < 0.4
    assert sum(r["colour"] == "red" for r in rows[:60]) <= 2
    assert len({r["product_id"] for r in rows[:60]}) == 20
    cols = [AttributeColumn(a) for a in attrs]
    records, problems = records_from_catalog(out / "catalog.csv", cols, "product_id")
    report = build_dataset(records, cols, tmp_path / "ds", min_per_value=3, problems=problems)
    assert sorted(r.reason for r in report.rejected) == ["empty", "missing", "not_an_image",
                                                         "truncated"]
    assert ("colour", "red") in {(d.attribute, d.value) for d in report.dropped_values}
