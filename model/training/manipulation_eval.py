"""Attribute manipulation under ADDE's protocol (Hou et al., ICCV 2021), per-attribute spaces.

    python -m model.evaluate --task manipulation --data DIR --checkpoint CKPT [--split test]
        [--reference DIR] [--target-weight W | --target-weights W1,W2,...] [--keep-mix M]
        [--agreement B] [--rank-target-weight W] [--pool N] [--without-reference]
        [--cache DIR] [--json FILE]

Queries: every fully labelled image of the split as reference, and for every attribute every
other value as target; the target labels are the reference's with that attribute set to that
value, and a query counts only when some image of the split carries all its target labels.
The gallery is the whole split (the reference included). Methods:

- ``image``: image-only search, no manipulation: sum over attributes of the cosine between
  the reference's and the item's embedding of that attribute;
- ``tag-filter``: the same ranking, restricted to the items whose predicted tag of the target
  attribute is the target value;
- ``prototype``: prototype composition (:func:`model.manipulation.manipulate`): the target
  attribute's term uses the target value's prototype instead of the reference, weighted by
  ``target_weight``, and each kept attribute's the reference's embedding mixed with the
  prototype of its own predicted value (``keep_mix``, :func:`model.manipulation.kept_vectors`).
  One row per target weight at ``--keep-mix``, and one row of the old default (keep_mix 1,
  weight 4: the reference's own embeddings) beside them;
- ``prototype-prob``: the same, with the target term the item's calibrated tag probability of
  the target value (:meth:`model.tagging.Tagger.probabilities`, a softmax over the cosines to
  the attribute's prototypes) instead of the raw cosine to the prototype (the same rows);
- ``agreement``: what the service ranks by (:func:`model.manipulation.agreement_scores`): the
  candidates the service takes (the items tagged with the target value, confidence 0.5 or
  more, and among them each attribute's top ``pool`` by its ``prototype`` term), ranked by the
  kept attributes' cosines plus ``agreement`` times the probability that item and reference
  share each kept attribute's value, plus ``target_weight`` times the item's probability of the
  target value (one row, at the defaults or ``--agreement`` / ``--rank-target-weight``);
  like the service it leaves out the reference itself.

Top-k accuracy: a query is a hit when one of its top k carries all the target labels. NDCG@k
(ADDE's ``compute_NDCG``): gain ``2^rel - 1`` discounted by ``log(rank + 1)``, normalised by k
results of relevance 1; relevance is the share of attributes whose label equals the target's
(overall), 1/0 for the target attribute (target), and the share of the other attributes
(others). k = 10 and 30.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.manipulation import (
    DEFAULT_AGREEMENT,
    DEFAULT_KEEP_MIX,
    DEFAULT_POOL,
    DEFAULT_RANK_TARGET_WEIGHT,
    DEFAULT_TARGET_WEIGHT,
    SAME_ITEM_COSINE,
    check_keep_mix,
    kept_vectors,
)
from model.prototypes import Prototypes
from model.tagging import Calibration, Tagger
from model.training.data import load_split
from model.training.prototype_fit import embed_split, full_labels
from model.training.report_output import emit_report
from model.training.tagging_eval import load_prototypes

KS = (10, 30)
METHODS = ("image", "tag-filter", "prototype", "prototype-prob", "agreement")
PARTS = ("all", "target", "others")
# The default before keep_mix (docs/RESULTS.md): the reference's own embeddings, weight 4.
OLD_DEFAULT = (1.0, 4.0)


@dataclass(frozen=True)
class Queries:
    """Manipulation queries: reference row, target attribute and value, target labels."""

    ref: np.ndarray      # int64 [Q]
    attr: np.ndarray     # int64 [Q]
    value: np.ndarray    # int64 [Q]
    target: np.ndarray   # int64 [Q, A]

    def __len__(self) -> int:
        return len(self.ref)


def _codes(labels: np.ndarray, n_values: Sequence[int]) -> np.ndarray:
    mult = np.cumprod([1, *[int(n) for n in n_values[:-1]]]).astype(np.int64)
    return labels @ mult


def make_queries(labels: np.ndarray, n_values: Sequence[int]) -> Queries:
    """Every fully labelled row x every attribute x every other value, kept when some row
    carries all the target labels (ADDE's valid queries)."""
    full = (labels >= 0).all(axis=1)
    present = set(_codes(labels[full], n_values).tolist())
    refs, attrs, values, targets = [], [], [], []
    for r in np.flatnonzero(full):
        for t, n in enumerate(n_values):
            for v in range(int(n)):
                if v == labels[r, t]:
                    continue
                target = labels[r].copy()
                target[t] = v
                refs.append(r)
                attrs.append(t)
                values.append(v)
                targets.append(target)
    if not refs:
        raise ValueError("no fully labelled reference image")
    tg = np.array(targets, dtype=np.int64)
    keep = np.isin(_codes(tg, n_values), list(present))
    if not keep.any():
        raise ValueError("no manipulation query has an image with all its target labels")
    return Queries(np.array(refs)[keep], np.array(attrs)[keep], np.array(values)[keep], tg[keep])


def ndcg(rel: np.ndarray) -> np.ndarray:
    """ADDE's NDCG of relevance rows [Q, k]: DCG / DCG of k results of relevance 1."""
    disc = 1.0 / np.log(np.arange(rel.shape[1], dtype=np.float64) + 2)
    return ((np.power(2.0, rel) - 1) @ disc) / disc.sum()


def relevances(found: np.ndarray, target: np.ndarray, attr: np.ndarray
               ) -> dict[str, np.ndarray]:
    """Relevance [Q, k] of the found items' labels ``found`` [Q, k, A] (rows of -1 for an
    empty rank) against ``target`` [Q, A], per part (all, target attribute, others)."""
    match = found == target[:, None, :]
    n_attr = target.shape[1]
    on_target = np.take_along_axis(match, attr[:, None, None], axis=2)[..., 0]
    total = match.sum(axis=2)
    return {"all": total / n_attr, "target": on_target.astype(np.float64),
            "others": (total - on_target) / max(1, n_attr - 1)}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] rows of the k best scores, best first (ties by row); -1 where the score is -inf."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return np.where(np.isfinite(np.take_along_axis(scores, idx, axis=1)), idx, -1)


def query_metrics(ranked: np.ndarray, labels: np.ndarray, q: Queries, ks: Sequence[int] = KS
                  ) -> dict[str, np.ndarray]:
    """Per query: ``hit@k`` (all target labels in the top k) and ``ndcg@k/<part>``."""
    padded = np.vstack([labels, np.full((1, labels.shape[1]), -1, labels.dtype)])
    found = padded[ranked]                      # row -1 -> the padding row
    rel = relevances(found, q.target, q.attr)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"hit@{k}"] = (rel["all"][:, :k] == 1.0).any(axis=1).astype(np.float64)
        for part in PARTS:
            out[f"ndcg@{k}/{part}"] = ndcg(rel[part][:, :k])
    return out


def kept_queries(emb: np.ndarray, protos: Prototypes, attributes: Sequence[str],
                 keep_mix: float) -> np.ndarray:
    """[R, A, D] kept-attribute query vectors of references ``emb`` [R, A, D]
    (:func:`model.manipulation.kept_vectors` per attribute)."""
    return np.stack([kept_vectors(emb[:, i], protos[a], keep_mix)
                     for i, a in enumerate(attributes)], axis=1)


def method_scores(method: str, emb: np.ndarray, refs: np.ndarray, q: Queries,
                  proto_cos: np.ndarray, tags: np.ndarray, target_weight: float,
                  proto_prob: np.ndarray | None = None, kept: np.ndarray | None = None
                  ) -> np.ndarray:
    """[Q, N] scores of queries ``q`` (whose references are rows ``refs`` of ``emb``).

    ``proto_cos`` / ``proto_prob``: [A, V, N] cosines of the items to each value's prototype
    and their calibrated tag probabilities; ``tags``: [N, A] predicted values; ``kept``:
    [R, A, D] the references' kept-attribute vectors for the prototype methods (default
    their own embeddings, :func:`kept_queries`)."""
    refs_emb = emb[refs] if kept is None or method in ("image", "tag-filter") else kept
    per = np.einsum("rad,nad->arn", refs_emb, emb)            # [A, R, N]
    local = np.searchsorted(refs, q.ref)
    total = per.sum(axis=0)[local]
    if method == "image":
        return total
    if method == "tag-filter":
        return np.where(tags[:, q.attr].T == q.value[:, None], total, -np.inf)
    if method == "prototype":
        return total - per[q.attr, local] + target_weight * proto_cos[q.attr, q.value]
    if method == "prototype-prob" and proto_prob is not None:
        return total - per[q.attr, local] + target_weight * proto_prob[q.attr, q.value]
    raise ValueError(f"unknown method {method!r}")


@dataclass(frozen=True)
class AgreementRun:
    """The ``agreement`` method's weights, candidates per attribute, and the confidence an
    item's predicted tag of the target value needs to be a candidate (the service's default
    ``min_confidence``, indexer.filters.DEFAULT_MIN_CONFIDENCE)."""

    agreement: float = DEFAULT_AGREEMENT
    target_weight: float = DEFAULT_RANK_TARGET_WEIGHT
    pool: int = DEFAULT_POOL
    min_confidence: float = 0.5


def agreement_method_scores(emb: np.ndarray, refs: np.ndarray, q: Queries, kept: np.ndarray,
                            proto_cos: np.ndarray, proto_prob: np.ndarray,
                            run: AgreementRun) -> np.ndarray:
    """[Q, N] scores of the ``agreement`` method; -inf outside each query's candidates and for
    the items that are the reference's own (:func:`model.manipulation.same_item` of its kept
    attributes: the reference itself). The candidates are the service's: the items tagged
    with the target value (probability at least ``run.min_confidence``), and among them the
    union of each attribute's top ``run.pool`` by that attribute's query term (the kept
    vector's cosine, the target prototype's for the target attribute)."""
    per = np.einsum("rad,nad->arn", kept, emb)                           # [A, R, N]
    local = np.searchsorted(refs, q.ref)
    linear = per.sum(axis=0)[local] - per[q.attr, local]
    agree = np.einsum("avr,avn->arn", proto_prob[:, :, refs], proto_prob)  # [A, R, N]
    kept_agree = agree.sum(axis=0)[local] - agree[q.attr, local]
    scores = linear + run.agreement * kept_agree + run.target_weight * proto_prob[q.attr, q.value]
    close = np.einsum("rad,nad->arn", emb[refs], emb) >= SAME_ITEM_COSINE    # [A, R, N]
    same = close.sum(axis=0)[local] - close[q.attr, local] == emb.shape[1] - 1
    scores[same] = -np.inf           # the reference itself, left out as the service does
    return np.where(_candidates(per[:, local], q, proto_cos, proto_prob, run), scores, -np.inf)


def _candidates(per: np.ndarray, q: Queries, proto_cos: np.ndarray, proto_prob: np.ndarray,
                run: AgreementRun) -> np.ndarray:
    """[Q, N] bool: the agreement method's candidates (``per``: [A, Q, N] the kept vectors'
    cosines)."""
    allowed = proto_prob[q.attr, q.value] >= run.min_confidence
    if run.pool >= allowed.shape[1]:
        return allowed
    terms = per.copy()
    terms[q.attr, np.arange(len(q))] = proto_cos[q.attr, q.value]
    chosen = np.zeros(allowed.shape, dtype=bool)
    for term in terms:
        top = np.argpartition(-np.where(allowed, term, -np.inf), run.pool - 1, axis=1)
        np.put_along_axis(chosen, top[:, :run.pool], True, axis=1)
    return chosen & allowed


@dataclass(frozen=True)
class Run:
    """One row of the table: a method, its target weight and keep_mix."""

    method: str
    weight: float = 0.0
    keep_mix: float = 1.0
    agreement: AgreementRun | None = None

    @property
    def name(self) -> str:
        if self.method in ("image", "tag-filter"):
            return self.method
        if self.agreement is not None:
            a = self.agreement
            return f"{self.method} mix={self.keep_mix:g} b={a.agreement:g} w={a.target_weight:g}"
        return f"{self.method} mix={self.keep_mix:g} w={self.weight:g}"


def make_runs(target_weights: Sequence[float], keep_mix: float, prob: bool,
              agreement: AgreementRun | None = None) -> list[Run]:
    """image, tag-filter, then per prototype method one row per target weight at
    ``keep_mix`` and the old default's row (:data:`OLD_DEFAULT`) unless one of them is it;
    with ``prob`` (a calibration) also the ``agreement`` row."""
    pairs = [(keep_mix, float(w)) for w in target_weights]
    if OLD_DEFAULT not in pairs:
        pairs.append(OLD_DEFAULT)
    methods = ("prototype", "prototype-prob") if prob else ("prototype",)
    runs = [Run("image"), Run("tag-filter")] + [Run(m, w, mix) for m in methods
                                                for mix, w in pairs]
    if prob:
        runs.append(Run("agreement", keep_mix=keep_mix, agreement=agreement or AgreementRun()))
    return runs


def evaluate_manipulation(emb: np.ndarray, labels: np.ndarray, n_values: Sequence[int],
                          protos: Prototypes, attributes: Sequence[str],
                          target_weights: Sequence[float] = (DEFAULT_TARGET_WEIGHT,),
                          calibration: Calibration | None = None, chunk: int = 64,
                          keep_mix: float = DEFAULT_KEEP_MIX,
                          agreement: AgreementRun | None = None,
                          without_reference: bool = False) -> dict[str, Any]:
    """Per method (and per keep_mix and target weight for the prototype methods,
    :func:`make_runs`): mean metrics overall and per target attribute. ``emb``: [N, A, D];
    ``labels``: [N, A]; ``calibration``: the tags' temperatures (``prototype-prob`` and
    ``agreement`` are run only with one); ``without_reference``: no method may rank a query's
    reference (ADDE's gallery holds it)."""
    runs = make_runs(target_weights, check_keep_mix(keep_mix), calibration is not None,
                     agreement)
    q = make_queries(labels, n_values)
    tagger = Tagger(protos, calibration)
    tags = np.stack([tagger.tag(a, emb[:, i]).values for i, a in enumerate(attributes)], 1)
    proto_cos = np.full((len(attributes), max(n_values), len(emb)), -np.inf)
    proto_prob = np.zeros_like(proto_cos)
    for i, a in enumerate(attributes):
        proto_cos[i, protos[a].indices()] = tagger.cosines(a, emb[:, i]).T
        proto_prob[i, protos[a].indices()] = tagger.probabilities(a, emb[:, i]).T
    sums: dict[str, dict[str, np.ndarray]] = {}
    uniq = np.unique(q.ref)
    for s in range(0, len(uniq), chunk):
        refs = uniq[s:s + chunk]
        sel = np.flatnonzero(np.isin(q.ref, refs))
        sub = Queries(q.ref[sel], q.attr[sel], q.value[sel], q.target[sel])
        kept = {mix: kept_queries(emb[refs], protos, attributes, mix)
                for mix in {r.keep_mix for r in runs}}
        for r in runs:
            if r.agreement is not None:
                scores = agreement_method_scores(emb, refs, sub, kept[r.keep_mix], proto_cos,
                                                 proto_prob, r.agreement)
            else:
                scores = method_scores(r.method, emb, refs, sub, proto_cos, tags, r.weight,
                                       proto_prob, kept[r.keep_mix])
            if without_reference:
                scores = np.array(scores, dtype=np.float64)
                scores[np.arange(len(sub)), sub.ref] = -np.inf
            ranked = top_k(scores, max(KS))
            for key, vals in query_metrics(ranked, labels, sub).items():
                acc = sums.setdefault(r.name, {}).setdefault(key, np.zeros(len(q)))
                acc[sel] = vals
    return _summarise(sums, q, attributes)


def _summarise(per_query: Mapping[str, Mapping[str, np.ndarray]], q: Queries,
               attributes: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"queries": int(len(q)), "queries_per_attribute": {
        a: int((q.attr == i).sum()) for i, a in enumerate(attributes)}, "methods": {}}
    for name, metrics in per_query.items():
        out["methods"][name] = {
            "overall": {k: float(v.mean()) for k, v in metrics.items()},
            "per_attribute": {a: {k: float(v[q.attr == i].mean()) for k, v in metrics.items()}
                              for i, a in enumerate(attributes) if (q.attr == i).any()}}
    return out


def format_manipulation(report: dict[str, Any]) -> str:
    cols = [(f"top-{k} acc %", f"hit@{k}", 100.0) for k in KS] + [
        (f"NDCG@{k} {p}", f"ndcg@{k}/{p}", 1.0) for k in KS for p in PARTS]
    w = max(len("method"), *(len(m) for m in report["methods"]))
    lines = [f"{report['queries']} queries  " + ", ".join(
        f"{a} {n}" for a, n in report["queries_per_attribute"].items()),
        f"{'method':<{w}}  " + "  ".join(f"{c[0]:>13}" for c in cols)]
    for name, m in report["methods"].items():
        o = m["overall"]
        lines.append(f"{name:<{w}}  " + "  ".join(
            f"{o[key] * scale:>13.{2 if scale > 1 else 4}f}" for _, key, scale in cols))
    lines += ["", "per target attribute (top-30 acc % / NDCG@10 target / NDCG@10 others):"]
    attrs = list(report["queries_per_attribute"])
    lines.append(f"{'method':<{w}}  " + "  ".join(f"{a:>22}" for a in attrs))
    for name, m in report["methods"].items():
        cells = []
        for a in attrs:
            v = m["per_attribute"].get(a)
            cells.append(f"{'':>22}" if v is None else
                         f"{100 * v['hit@30']:>6.1f} / {v['ndcg@10/target']:.3f} / "
                         f"{v['ndcg@10/others']:.3f}")
        lines.append(f"{name:<{w}}  " + "  ".join(cells))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.evaluate --task manipulation",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--reference", type=Path, default=None,
                   help="make prototypes from this dataset's train split (default: the "
                        "checkpoint's own)")
    p.add_argument("--target-weight", type=float, default=None,
                   help=f"weight of the target attribute's prototype term "
                        f"(default {DEFAULT_TARGET_WEIGHT:g})")
    p.add_argument("--target-weights", default=None,
                   help="comma-separated weights: one prototype row each (to choose one)")
    p.add_argument("--keep-mix", type=float, default=DEFAULT_KEEP_MIX,
                   help=f"kept attributes' share of the reference's own embedding, in (0, 1] "
                        f"(default {DEFAULT_KEEP_MIX:g}; a row of the old default, keep_mix "
                        f"{OLD_DEFAULT[0]:g} and weight {OLD_DEFAULT[1]:g}, is always added)")
    p.add_argument("--agreement", type=float, default=DEFAULT_AGREEMENT,
                   help=f"the agreement row's weight of each kept attribute's value agreement "
                        f"(default {DEFAULT_AGREEMENT:g})")
    p.add_argument("--rank-target-weight", type=float, default=DEFAULT_RANK_TARGET_WEIGHT,
                   help=f"the agreement row's weight of the target value's probability "
                        f"(default {DEFAULT_RANK_TARGET_WEIGHT:g})")
    p.add_argument("--pool", type=int, default=DEFAULT_POOL,
                   help=f"candidates per attribute the agreement row ranks, among the items tagged "
                        f"with the target value (default {DEFAULT_POOL})")
    p.add_argument("--without-reference", action="store_true",
                   help="leave each query's reference out of every method's results (ADDE's "
                        "gallery holds it, and image-only search ranks it first)")
    p.add_argument("--cache", type=Path, default=None, help="keep embeddings in this folder")
    p.add_argument("--json", type=Path)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    return p


def _weights(args: argparse.Namespace) -> list[float]:
    if args.target_weights:
        weights = [float(x) for x in args.target_weights.split(",") if x.strip()]
    else:
        weights = [args.target_weight if args.target_weight is not None
                   else DEFAULT_TARGET_WEIGHT]
    if not weights or any(not w > 0 for w in weights):
        raise ValueError("target weights must be positive numbers")
    return weights


def run(args: argparse.Namespace) -> dict[str, Any]:
    from model import load_model

    weights = _weights(args)
    keep_mix = check_keep_mix(args.keep_mix)
    emb = load_model(args.checkpoint, device=args.device, batch_size=args.batch_size)
    protos, cal, where = load_prototypes(emb, args.checkpoint, args.reference, args.cache)
    data = load_split(args.data, args.split)
    attrs = [a.name for a in data.attributes]
    missing = [a for a in attrs if a not in protos]
    if missing:
        raise ValueError(f"no prototypes for {', '.join(missing)}")
    labels = full_labels(data)
    if not (labels >= 0).all(axis=1).any():
        raise ValueError(f"{args.data} {args.split}: no image is labelled for every attribute "
                         "(the protocol needs full labels, e.g. a catalog.csv)")
    embs = embed_split(emb, data, attrs, args.cache, progress=True)
    if args.agreement < 0 or not args.rank_target_weight > 0 or args.pool < 1:
        raise ValueError("need --agreement >= 0, --rank-target-weight > 0 and --pool >= 1")
    agreement = AgreementRun(args.agreement, args.rank_target_weight, args.pool)
    report = evaluate_manipulation(embs, labels, [a.n_values for a in data.attributes],
                                   protos, attrs, weights, cal, keep_mix=keep_mix,
                                   agreement=agreement, without_reference=args.without_reference)
    report.update(data=str(args.data), split=args.split, checkpoint=str(args.checkpoint),
                  prototypes=where, target_weights=weights, keep_mix=keep_mix,
                  without_reference=args.without_reference)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    header = (f"checkpoint {args.checkpoint}  data {args.data}  split {args.split}\n"
              f"prototypes: {report['prototypes']}")
    emit_report(report, f"{header}\n{format_manipulation(report)}", args.json)
    return 0


__all__ = ["OLD_DEFAULT", "AgreementRun", "Queries", "Run", "agreement_method_scores",
           "evaluate_manipulation", "format_manipulation",
           "kept_queries", "main", "make_queries", "make_runs", "ndcg", "query_metrics",
           "relevances", "top_k"]
