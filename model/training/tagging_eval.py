"""Tagging accuracy and confidence calibration of a checkpoint's value prototypes (issue 22).

    python -m model.evaluate --task tagging --data DIR --checkpoint CKPT [--split test]
        [--reference DIR] [--knn K] [--cache DIR] [--json FILE]

Every labelled (image, attribute) pair of the split is tagged with its nearest value
prototype (cosine, in the attribute's space) and a confidence (the calibrated softmax of
:mod:`model.tagging`). Prototypes and temperatures come from the checkpoint (the ``prototypes``
key) or, with ``--reference DIR``, are made from DIR's train split and fitted on its valid split.
``--knn K`` (with a reference) also tags by a similarity-weighted vote of the K nearest labelled
training images, for comparison. Reports per-attribute accuracy, the expected calibration error
(15 equal-width bins) before (T = 1) and after calibration, and the reliability table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from model.embedder import Embedder
from model.prototypes import Prototypes, read_prototypes
from model.tagging import (
    ECE_BINS,
    Calibration,
    Tagger,
    expected_calibration_error,
    reliability_table,
)
from model.training.data import load_split
from model.training.prototype_fit import embed_split, full_labels, prototypes_for
from model.training.report_output import emit_report

KNN_DEFAULT = 10


def knn_predict(train: np.ndarray, train_labels: np.ndarray, queries: np.ndarray,
                k: int) -> np.ndarray:
    """Similarity-weighted vote of the ``k`` nearest labelled rows (cosine); [N] values."""
    keep = train_labels >= 0
    train, train_labels = train[keep], train_labels[keep]
    k = min(k, len(train))
    n_values = int(train_labels.max()) + 1
    out = np.empty(len(queries), dtype=np.int64)
    for s in range(0, len(queries), 512):
        sim = queries[s:s + 512] @ train.T
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        votes = np.zeros((len(nn), n_values))
        rows = np.repeat(np.arange(len(nn)), k)
        np.add.at(votes, (rows, train_labels[nn].ravel()),
                  np.take_along_axis(sim, nn, axis=1).ravel())
        out[s:s + 512] = votes.argmax(axis=1)
    return out


def load_prototypes(emb: Embedder, checkpoint: Path, reference: Path | None,
                    cache: Path | None) -> tuple[Prototypes, Calibration | None, str]:
    """The prototypes and calibration to evaluate, and a line saying where they came from."""
    if reference is not None:
        protos, cal = prototypes_for(emb, reference, cache, progress=True)
        return protos, cal, f"made from {reference} train split; calibrated on {cal.fitted_on}"
    protos_or_none, cal_or_none = read_prototypes(checkpoint)
    if protos_or_none is None:
        raise ValueError(f"{checkpoint} keeps no value prototypes; pass --reference DIR "
                         "(a dataset with train and valid splits) or store them with "
                         "python -m model.training.prototype_fit")
    where = "the checkpoint's prototypes" + (
        f"; calibrated on {cal_or_none.fitted_on}" if cal_or_none else "; uncalibrated")
    return protos_or_none, cal_or_none, where


def _pooled(conf: list[np.ndarray], ok: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate(conf) if conf else np.zeros(0),
            np.concatenate(ok) if ok else np.zeros(0, bool))


def tagging_report(tagger: Tagger, embeddings: np.ndarray, labels: np.ndarray,
                   attributes: Sequence[str], knn: dict[str, np.ndarray] | None = None
                   ) -> dict[str, Any]:
    """Per attribute: n, accuracy, ECE at T = 1 and calibrated; pooled ECE + reliability."""
    raw = Tagger(tagger.prototypes)
    per: dict[str, dict[str, float]] = {}
    conf_all, ok_all, raw_conf, raw_ok = [], [], [], []
    for i, attr in enumerate(attributes):
        rows = np.flatnonzero(labels[:, i] >= 0)
        if attr not in tagger.prototypes or len(rows) == 0:
            continue
        truth = labels[rows, i]
        tags, tags1 = tagger.tag(attr, embeddings[rows, i]), raw.tag(attr, embeddings[rows, i])
        ok = tags.values == truth
        conf_all.append(tags.confidences)
        ok_all.append(ok)
        raw_conf.append(tags1.confidences)
        raw_ok.append(tags1.values == truth)
        per[attr] = {"n": int(len(rows)), "accuracy": 100.0 * float(ok.mean()),
                     "temperature": tagger.temperature(attr),
                     "ece_uncalibrated": expected_calibration_error(tags1.confidences, ok),
                     "ece": expected_calibration_error(tags.confidences, ok),
                     "mean_confidence": float(tags.confidences.mean())}
        if knn is not None and attr in knn:
            per[attr]["knn_accuracy"] = 100.0 * float((knn[attr] == truth).mean())
    conf, ok = _pooled(conf_all, ok_all)
    rconf, rok = _pooled(raw_conf, raw_ok)
    return {"per_attribute": per, "overall": {
        "n": int(len(ok)), "accuracy": 100.0 * float(ok.mean()) if len(ok) else 0.0,
        "ece": expected_calibration_error(conf, ok),
        "ece_uncalibrated": expected_calibration_error(rconf, rok)},
        "reliability": [asdict(b) for b in reliability_table(conf, ok, ECE_BINS)]}


def _knn_tags(emb: Embedder, reference: Path, attributes: Sequence[str], test: np.ndarray,
              labels: np.ndarray, k: int, cache: Path | None) -> dict[str, np.ndarray]:
    train = load_split(reference, "train")
    order = [a.name for a in train.attributes]
    t_emb = embed_split(emb, train, attributes, cache, progress=True)
    t_lab = full_labels(train)[:, [order.index(a) for a in attributes]]
    return {a: knn_predict(t_emb[:, i], t_lab[:, i], test[labels[:, i] >= 0, i], k)
            for i, a in enumerate(attributes)}


def format_tagging(report: dict[str, Any]) -> str:
    per = report["per_attribute"]
    has_knn = any("knn_accuracy" in v for v in per.values())
    w = max([len("attribute"), len("overall")] + [len(a) for a in per])
    head = f"{'attribute':<{w}}  {'n':>6}  {'accuracy %':>10}"
    head += f"  {'kNN acc. %':>10}" if has_knn else ""
    lines = [head + f"  {'T':>7}  {'ECE (T=1)':>9}  {'ECE':>7}"]
    for a, v in per.items():
        line = f"{a:<{w}}  {v['n']:>6}  {v['accuracy']:>10.2f}"
        line += f"  {v.get('knn_accuracy', float('nan')):>10.2f}" if has_knn else ""
        lines.append(line + f"  {v['temperature']:>7.4f}  {v['ece_uncalibrated']:>9.4f}"
                            f"  {v['ece']:>7.4f}")
    o = report["overall"]
    lines.append(f"{'overall':<{w}}  {o['n']:>6}  {o['accuracy']:>10.2f}"
                 + (" " * 12 if has_knn else "") + f"  {'':>7}  {o['ece_uncalibrated']:>9.4f}"
                 f"  {o['ece']:>7.4f}")
    lines += ["", "reliability (all attributes pooled, calibrated confidences):",
              f"{'confidence':<13}  {'n':>6}  {'mean conf.':>10}  {'accuracy':>8}"]
    for b in report["reliability"]:
        if b["count"]:
            lines.append(f"({b['low']:.3f}, {b['high']:.3f}]  {b['count']:>6}  "
                         f"{b['mean_confidence']:>10.4f}  {b['accuracy']:>8.4f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.evaluate --task tagging",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="dataset folder to tag")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--reference", type=Path, default=None,
                   help="make prototypes from this dataset's train split and calibrate on its "
                        "valid split (default: the checkpoint's own)")
    p.add_argument("--knn", type=int, default=None,
                   help=f"also tag by a kNN vote over the reference's train split "
                        f"(K, e.g. {KNN_DEFAULT}; needs --reference)")
    p.add_argument("--cache", type=Path, default=None, help="keep embeddings in this folder")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    from model import load_model

    emb = load_model(args.checkpoint, device=args.device, batch_size=args.batch_size)
    protos, cal, where = load_prototypes(emb, args.checkpoint, args.reference, args.cache)
    data = load_split(args.data, args.split)
    attrs = [a.name for a in data.attributes if a.name in protos]
    if not attrs:
        raise ValueError(f"none of {args.data}'s attributes has a prototype")
    cols = [[a.name for a in data.attributes].index(a) for a in attrs]
    labels = full_labels(data)[:, cols]
    embs = embed_split(emb, data, attrs, args.cache, progress=True)
    knn = None
    if args.knn:
        knn = _knn_tags(emb, args.reference, attrs, embs, labels, args.knn, args.cache)
    report = tagging_report(Tagger(protos, cal), embs, labels, attrs, knn)
    report.update(data=str(args.data), split=args.split, checkpoint=str(args.checkpoint),
                  prototypes=where, knn_k=args.knn, calibration=cal.to_dict() if cal else None)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.knn is not None and (args.knn < 1 or args.reference is None):
        print("error: --knn needs K >= 1 and --reference DIR", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    emit_report(report, f"checkpoint {args.checkpoint}  data {args.data}  split {args.split}\n"
                        f"prototypes: {report['prototypes']}\n{format_tagging(report)}", args.json)
    return 0


__all__ = ["format_tagging", "knn_predict", "main", "tagging_report"]
