"""Shared by the vector-index benchmarks (scaling.py, recall_target.py): the exact top 10
accumulated chunk by chunk, the catalog of ids ``i0 .. i{n-1}``, resident memory, and recall
and latency of one query at a time.

Import it as a sibling (``from vectorkit import ...``), like benchkit.
"""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path

import numpy as np


class ExactTop10:
    """The exact top 10 by inner product of ``queries`` over rows seen chunk by chunk."""

    def __init__(self, queries: np.ndarray) -> None:
        self.queries = queries
        self.scores = np.full((len(queries), 10), -np.inf, np.float32)
        self.rows = np.zeros((len(queries), 10), np.int64)

    def add(self, start: int, x: np.ndarray) -> None:
        """Merge rows ``start .. start + len(x)`` into the running top 10."""
        scores = self.queries @ x.T
        cand_s = np.concatenate([self.scores, scores], axis=1)
        cand_i = np.concatenate([self.rows, np.broadcast_to(np.arange(start, start + len(x)),
                                                            scores.shape)], axis=1)
        top = np.argsort(-cand_s, axis=1, kind="stable")[:, :10]
        self.scores = np.take_along_axis(cand_s, top, 1)
        self.rows = np.take_along_axis(cand_i, top, 1)


def write_id_catalog(root: Path, n: int) -> None:
    """``root/catalog.csv`` with items ``i{k}`` (image ``i{k}.jpg``, never read) for k < n."""
    with open(root / "catalog.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image"])
        w.writerows([f"i{k}", f"i{k}.jpg"] for k in range(n))


def rss_anon() -> int:
    """Resident anonymous memory of this process, bytes (not file-backed pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def answer_all(idx, q: np.ndarray, top: np.ndarray) -> dict:
    """Recall@10 and p50/p95 latency of one query at a time through `CatalogIndex.search`."""
    lat, recall = [], []
    idx.search("a", q[:1], 10)                                     # first-touch costs apart
    for i in range(len(q)):
        t = time.perf_counter()
        hits = idx.search("a", q[i:i + 1], 10)[0]
        lat.append(time.perf_counter() - t)
        recall.append(len({int(h.item.id[1:]) for h in hits} & set(top[i].tolist())) / 10)
    return {"recall_at_10": round(float(np.mean(recall)), 4),
            "p50_ms": round(statistics.median(lat) * 1000, 3),
            "p95_ms": round(float(np.percentile(lat, 95)) * 1000, 3)}
