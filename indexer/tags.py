"""Tags and facet counts: the value an item has for an attribute (issue 22).

Every item of an index has, for every attribute with value prototypes, one `Tag`: its own
catalog label (source "label", confidence 1) or the nearest value prototype in the attribute's
space with its calibrated confidence (source "prediction", model/tagging.py). Standard library
only, like indexer/items.py, which stores them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

TagSource = Literal["label", "prediction"]
SOURCES: tuple[TagSource, ...] = ("label", "prediction")


@dataclass(frozen=True, slots=True)
class Tag:
    """One item's value for one attribute; a catalog label has confidence 1.0."""

    value: str
    confidence: float
    source: TagSource

    @property
    def is_label(self) -> bool:
        return self.source == "label"


@dataclass(frozen=True)
class FacetCount:
    """How many items have a value: labelled, and predicted (at the asked confidence)."""

    value: str
    labelled: int
    predicted: int

    @property
    def total(self) -> int:
        return self.labelled + self.predicted


def value_key(value: str) -> str:
    """The form a tag value is matched in (filters): trimmed and case-folded."""
    return str(value).strip().casefold()


def count_tags(tags: Iterable[Tag | None], min_confidence: float,
               base: Iterable[FacetCount] = ()) -> list[FacetCount]:
    """Facet counts of `tags` (None: an item without one) at `min_confidence` or more, added
    to `base`; one count per value key, in key order."""
    counts = {value_key(f.value): f for f in base}
    for tag in tags:
        if tag is None or tag.confidence < min_confidence:
            continue
        key = value_key(tag.value)
        f = counts.get(key) or FacetCount(tag.value, 0, 0)
        counts[key] = FacetCount(f.value, f.labelled + tag.is_label,
                                 f.predicted + (not tag.is_label))
    return [counts[k] for k in sorted(counts)]


__all__ = ["FacetCount", "SOURCES", "Tag", "TagSource", "count_tags", "value_key"]
