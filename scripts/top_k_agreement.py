"""Search an index by every item and attribute; how many of the top k share the item's value.

    python scripts/top_k_agreement.py --index demo-data/index [--k 10]

What a user of the demo sees, as a number: each indexed item queries the index with its own
stored embedding of an attribute (as ``POST /v1/search/by-item`` does), the item itself is
left out, and the share of the top ``k`` whose catalog value of that attribute equals the
item's is averaged per attribute. Chance is the share a random top k would have: the mean,
over items, of the fraction of the other items that share the item's value. The attribute
values come from the catalog's metadata columns named after the attributes (the synthetic
catalog has them).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer.reader import CatalogIndex


@dataclass(frozen=True)
class Agreement:
    attribute: str
    queries: int
    share: float     # mean share of the top k with the query's value
    chance: float    # the same for a random top k


def agreement(index: CatalogIndex, attribute: str, k: int) -> Agreement:
    total, items = index.list_items(0, 10**9)
    items = [it for it in items if attribute in it.metadata]
    if len(items) < 2:
        raise ValueError(f"fewer than two items carry a {attribute!r} metadata column")
    counts = Counter(it.metadata[attribute] for it in items)
    shares, chances = [], []
    for it in items:
        vec = index.embedding(it.id, attribute)
        hits = index.search(attribute, vec, k + 1)[0]
        top = [h.item for h in hits if h.item.id != it.id][:k]
        value = it.metadata[attribute]
        shares.append(sum(h.metadata.get(attribute) == value for h in top) / max(1, len(top)))
        chances.append((counts[value] - 1) / (len(items) - 1))
    return Agreement(attribute, len(items), sum(shares) / len(shares),
                     sum(chances) / len(chances))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--index", type=Path, required=True, help="an INDEX_DIR")
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    index = CatalogIndex.open(args.index)
    try:
        print(f"{'attribute':<16}{'queries':>8}{f'top-{args.k} share':>14}{'chance':>8}")
        for name in index.attributes:
            a = agreement(index, name, args.k)
            print(f"{a.attribute:<16}{a.queries:>8}{a.share:>14.2f}{a.chance:>8.2f}")
    finally:
        index.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
