"""Tag items from their stored embeddings (issue 22): at `indexer build`, at `--update` and
for every live put, the same way.

For every attribute with value prototypes, an item's tag is its own catalog label when its
metadata has one (a column named after the attribute; trimmed, case-insensitive; source
"label", confidence 1) and otherwise the nearest prototype in the attribute's space with the
checkpoint's calibrated confidence (model/tagging.py; source "prediction"). A label that names
no known value stays the item's value as written (trimmed).

Tagging is one matrix product per attribute over embeddings the index stores anyway.
numpy only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from indexer.items import TagRow
from indexer.tags import Tag
from model.prototypes import Prototypes
from model.tagging import Calibration, Tagger


def label_text(metadata: Mapping[str, object], attribute: str) -> str | None:
    """The item's own label for `attribute` (its metadata column of that name, trimmed), or
    None when it has none."""
    raw = metadata.get(attribute)
    if raw is None or isinstance(raw, (dict, list, bool)):
        return None
    text = str(raw).strip()
    return text or None


@dataclass(frozen=True)
class TagTable:
    """One attribute's tags of N items, column-wise."""

    attribute: str
    values: list[str]
    confidences: np.ndarray     # float32 [N]
    is_label: np.ndarray        # bool [N]

    def tag(self, n: int) -> Tag:
        return Tag(self.values[n], float(self.confidences[n]),
                   "label" if self.is_label[n] else "prediction")


class ItemTagger:
    """Tags of items from their embeddings and metadata, for every attribute with
    prototypes."""

    def __init__(self, prototypes: Prototypes, calibration: Calibration | None) -> None:
        self.prototypes = prototypes
        self.calibration = calibration
        self._tagger = Tagger(prototypes, calibration)
        self._known = {a: {p.name.strip().casefold(): p.value for p in ap.values}
                       for a, ap in prototypes.attributes.items()}

    @property
    def attributes(self) -> list[str]:
        return self.prototypes.names()

    def table(self, attribute: str, embeddings: np.ndarray,
              metadata: Sequence[Mapping[str, object]]) -> TagTable:
        """One attribute's tags of N items: embeddings [N, D] unit-norm, metadata [N].
        Predictions and known labels are `Tagger.tag`'s; a label of no known value is kept
        as written."""
        n = len(metadata)
        if n == 0:
            return TagTable(attribute, [], np.zeros(0, np.float32), np.zeros(0, bool))
        known = self._known[attribute]
        texts = [label_text(meta, attribute) for meta in metadata]
        column = self._tagger.tag(attribute, embeddings,
                                  [-1 if t is None else known.get(t.casefold(), -1)
                                   for t in texts])
        values, conf = list(column.names), column.confidences.copy()
        is_label = column.is_label.copy()
        for i, text in enumerate(texts):
            if text is not None and not is_label[i]:     # a value the prototypes lack
                values[i], conf[i], is_label[i] = text, 1.0, True
        return TagTable(attribute, values, conf, is_label)

    def tables(self, embeddings: Mapping[str, np.ndarray],
               metadata: Sequence[Mapping[str, object]]) -> list[TagTable]:
        """:meth:`table` for every attribute with both prototypes and embeddings."""
        return [self.table(a, embeddings[a], metadata) for a in self.attributes
                if a in embeddings]

    def tags(self, embeddings: Mapping[str, np.ndarray],
             metadata: Sequence[Mapping[str, object]]) -> list[dict[str, Tag]]:
        """Per item, attribute -> Tag."""
        tables = self.tables(embeddings, metadata)
        return [{t.attribute: t.tag(i) for t in tables} for i in range(len(metadata))]


def tag_rows(rows: Sequence[int] | np.ndarray, tables: Sequence[TagTable]) -> Iterator[TagRow]:
    """The stored form of tag tables over items whose rows are `rows`."""
    for t in tables:
        for n, row in enumerate(rows):
            yield (int(row), t.attribute, t.values[n], float(t.confidences[n]),
                   "label" if t.is_label[n] else "prediction")


__all__ = ["ItemTagger", "TagRow", "TagTable", "label_text", "tag_rows"]
