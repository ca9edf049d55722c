"""Tags in answers: an item's tags as the API returns them, the attributes an index has tags
for, and facet counts (issue 22), over the whole index (GET /v1/attributes) or over a
search's top N results. Plain functions; facets of the index run on the index threads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from indexer.items import Item
from indexer.tags import FacetCount, Tag, value_key

from .protocols import CatalogIndexLike
from .schemas import AttributeFacets, FacetValue, TagInfo


def tag_infos(tags: Mapping[str, Tag]) -> dict[str, TagInfo]:
    """An item's tags as the API returns them."""
    return {a: TagInfo(value=t.value, confidence=round(float(t.confidence), 6), source=t.source)
            for a, t in tags.items()}


def tagged_attributes(index: CatalogIndexLike) -> list[str]:
    """The index's attributes that have tags (its value prototypes'), in index order."""
    prototypes = index.prototypes()
    if prototypes is None:
        return []
    return [a for a in index.attributes if a in prototypes]


def attribute_facets(counts: Iterable[FacetCount], items: int) -> AttributeFacets:
    """The API form of one attribute's facet counts over `items` items."""
    values = [FacetValue(value=c.value, labelled=c.labelled, predicted=c.predicted,
                         total=c.total) for c in counts]
    return AttributeFacets(values=values, items=items,
                           below_min_confidence=max(0, items - sum(v.total for v in values)))


def index_facets(index: CatalogIndexLike, attributes: Sequence[str],
                 min_confidence: float) -> tuple[int, dict[str, AttributeFacets]]:
    """(item count, facet counts of every item per attribute) in one go (reads the journal)."""
    n = len(index)
    return n, {a: attribute_facets(index.facets(a, None, min_confidence), n) for a in attributes}


def item_facets(items: Sequence[Item], attributes: Sequence[str],
                min_confidence: float) -> dict[str, AttributeFacets]:
    """Facet counts of the tags of `items` (a search's top N) per attribute."""
    out = {}
    for a in attributes:
        counts: dict[str, FacetCount] = {}
        for item in items:
            tag = item.tags.get(a)
            if tag is None or tag.confidence < min_confidence:
                continue
            key = value_key(tag.value)
            c = counts.get(key) or FacetCount(tag.value, 0, 0)
            counts[key] = FacetCount(c.value, c.labelled + tag.is_label,
                                     c.predicted + (not tag.is_label))
        out[a] = attribute_facets([counts[k] for k in sorted(counts)], len(items))
    return out
