"""Value prototypes and tag calibration for a checkpoint, from a dataset folder (issue 22).

    python -m model.training.prototype_fit --checkpoint CKPT --data DIR [--cache DIR]

embeds the training split of ``DIR`` for every attribute, makes each value's prototype from
the training labels (:func:`model.prototypes.compute_prototypes`), fits the per-attribute
softmax temperature of the tags on the validation split (:func:`model.tagging.fit_temperature`)
and stores both in the checkpoint (its optional ``prototypes`` key; every other key is kept, so
the file loads as before). ``model.train`` calls :func:`attach_prototypes` on its best
checkpoint at the end of a run.

Labels of a split: ``label_train.txt`` for train, the query and candidate files for valid and
test, completed by ``catalog.csv`` when the dataset has one (the synthetic data: every image,
every attribute).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.embedder import Embedder
from model.prototypes import Prototypes, compute_prototypes, write_prototypes
from model.tagging import Calibration, Tagger, fit_temperature
from model.training.data import DataError, Split, load_split, read_attributes
from model.training.evaluate import _default_workers, _loader, _progress, prefetch_batches

log = logging.getLogger(__name__)


def value_names(root: str | os.PathLike) -> dict[str, list[str]]:
    """attr -> value names from ``attributes.json``'s ``values`` lists (where given)."""
    path = Path(root) / "attributes.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("attributes", [])
    if not isinstance(data, list):
        return {}
    return {str(d["name"]): [str(v) for v in d["values"]] for d in data
            if isinstance(d, dict) and isinstance(d.get("values"), list)}


def full_labels(data: Split) -> np.ndarray:
    """[N, A] value indices of one split (-1 unknown), from its own files and ``catalog.csv``."""
    out = np.full((len(data), len(data.attributes)), -1, dtype=np.int64)
    for image_id, pairs in data.labels.items():
        for a, v in pairs.items():
            out[image_id, a] = v
    catalog = data.root / "catalog.csv"
    if not catalog.is_file():
        return out
    row_of = {str(p): i for i, p in enumerate(data.image_paths)}
    names = value_names(data.root)
    index = {a: {n.casefold(): v for v, n in enumerate(names.get(s.name, []))}
             for a, s in enumerate(data.attributes)}
    with open(catalog, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            i = row_of.get(os.path.abspath(data.root / (rec.get("image") or "")))
            if i is None:
                continue
            for a, spec in enumerate(data.attributes):
                value = index[a].get((rec.get(spec.name) or "").strip().casefold())
                if value is not None:
                    out[i, a] = value
    return out


def _cache_file(cache_dir: Path, emb: Embedder, data: Split, names: Sequence[str]) -> Path:
    h = hashlib.sha256()
    for key, value in sorted(emb.net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([list(names), emb.precision, [str(p) for p in data.image_paths]]).encode())
    return cache_dir / f"emb-{data.name}-{h.hexdigest()[:20]}.npy"


def embed_split(emb: Embedder, data: Split, attributes: Sequence[str] | None = None,
                cache_dir: Path | None = None, workers: int | None = None,
                progress: bool = False) -> np.ndarray:
    """[N, A, D] every image of the split for every attribute (the dataset's by default);
    kept in ``cache_dir`` (keyed by the weights and the image list) when given."""
    names = list(attributes) if attributes is not None else [a.name for a in data.attributes]
    path = _cache_file(cache_dir, emb, data, names) if cache_dir is not None else None
    if path is not None and path.is_file():
        return np.load(path)
    out = np.empty((len(data), len(names), emb.dim), dtype=np.float32)
    bar = _progress(len(data), f"embedding {data.name}", progress)
    step = max(1, emb.batch_size // max(1, len(names))) * 4
    for start, batch in prefetch_batches(data.image_paths, step, _loader(emb),
                                         workers or _default_workers()):
        out[start:start + len(batch)] = emb.embed_all_prepared(batch, names)
        bar.update(len(batch))
    bar.close()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out


def split_prototypes(embeddings: np.ndarray, labels: np.ndarray, attributes: Sequence[str],
                     names: dict[str, list[str]], source: str = "train") -> Prototypes:
    """:func:`compute_prototypes` of a split's [N, A, D] embeddings and [N, A] labels."""
    return compute_prototypes({a: embeddings[:, i] for i, a in enumerate(attributes)},
                              {a: labels[:, i] for i, a in enumerate(attributes)}, source, names)


def fit_calibration(protos: Prototypes, embeddings: np.ndarray, labels: np.ndarray,
                    attributes: Sequence[str], fitted_on: str) -> Calibration:
    """Per-attribute temperatures fitted on labelled embeddings (rows with a known value that
    has a prototype); attributes without such rows keep T = 1."""
    tagger = Tagger(protos)
    temps: dict[str, float] = {}
    for i, attr in enumerate(attributes):
        if attr not in protos:
            continue
        col = {int(v): j for j, v in enumerate(protos[attr].indices())}
        rows = [r for r in range(len(labels)) if int(labels[r, i]) in col]
        if rows:
            cos = tagger.cosines(attr, embeddings[rows, i])
            temps[attr] = fit_temperature(cos, np.array([col[int(labels[r, i])] for r in rows]))
    return Calibration(temps, fitted_on)


def prototypes_for(emb: Embedder, data_dir: Path, cache_dir: Path | None = None,
                   workers: int | None = None, progress: bool = False
                   ) -> tuple[Prototypes, Calibration]:
    """Prototypes from ``data_dir``'s train split, calibration on its valid split."""
    attrs = [a.name for a in read_attributes(data_dir) if a.name in emb.attribute_names]
    names = value_names(data_dir)
    train = load_split(data_dir, "train")
    protos = split_prototypes(embed_split(emb, train, attrs, cache_dir, workers, progress),
                              full_labels(train)[:, _columns(train, attrs)], attrs, names)
    try:
        valid = load_split(data_dir, "valid")
    except DataError:
        return protos, Calibration({}, f"uncalibrated: {data_dir} has no valid split")
    v_lab = full_labels(valid)[:, _columns(valid, attrs)]
    fitted_on = (f"{data_dir} valid split ({len(valid)} images, "
                 f"{int((v_lab >= 0).sum())} labelled (image, attribute) pairs)")
    cal = fit_calibration(protos, embed_split(emb, valid, attrs, cache_dir, workers, progress),
                          v_lab, attrs, fitted_on)
    return protos, cal


def _columns(data: Split, attrs: Sequence[str]) -> list[int]:
    order = [a.name for a in data.attributes]
    return [order.index(a) for a in attrs]


def attach_prototypes(checkpoint: Path, data_dir: Path, device: str | None = None,
                      cache_dir: Path | None = None) -> tuple[Prototypes, Calibration]:
    """Compute prototypes and calibration for ``checkpoint`` from ``data_dir`` and store them
    in the checkpoint file."""
    from model import load_model

    emb = load_model(checkpoint, device=device)
    protos, cal = prototypes_for(emb, data_dir, cache_dir)
    write_prototypes(checkpoint, protos, cal)
    log.info("value prototypes of %s from %s's training labels (%s), tag calibration fitted "
             "on %s", checkpoint, data_dir, ", ".join(
                 f"{a} {sum(v.count for v in ap.values)}" for a, ap in protos.attributes.items()),
             cal.fitted_on)
    return protos, cal


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.training.prototype_fit",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="dataset folder (train + valid)")
    p.add_argument("--cache", type=Path, default=None, help="keep the embeddings here")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    try:
        protos, cal = attach_prototypes(args.checkpoint, args.data, args.device, args.cache)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for attr, ap in protos.attributes.items():
        counts = ", ".join(f"{v.name} {v.count}" for v in ap.values)
        print(f"{attr}: T = {cal.temperature(attr):.4f}; prototypes from {counts}")
    print(f"calibration fitted on {cal.fitted_on}; written to {args.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
