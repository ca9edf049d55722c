"""Tags in answers: an item's tags as the API returns them, the attributes an index has tags
for, and facet counts (issue 22), over the whole index (GET /v1/attributes) or over a
search's top N results. Plain functions; facets of the index run on the index threads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from indexer.items import Item
from indexer.tags import FacetCount, Tag, count_tags

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
    return {a: attribute_facets(count_tags((item.tags.get(a) for item in items),
                                           min_confidence), len(items))
            for a in attributes}
