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
        self._names = {a: np.array([p.name for p in ap.values], dtype=object)
                       for a, ap in prototypes.attributes.items()}
        self._known = {a: {p.name.strip().casefold(): p.name for p in ap.values}
                       for a, ap in prototypes.attributes.items()}

    @property
    def attributes(self) -> list[str]:
        return self.prototypes.names()

    def table(self, attribute: str, embeddings: np.ndarray,
              metadata: Sequence[Mapping[str, object]]) -> TagTable:
        """One attribute's tags of N items: embeddings [N, D] unit-norm, metadata [N]."""
        n = len(metadata)
        if n == 0:
            return TagTable(attribute, [], np.zeros(0, np.float32), np.zeros(0, bool))
        probs = self._tagger.probabilities(attribute, embeddings)
        best = probs.argmax(axis=1)
        conf = probs[np.arange(n), best].astype(np.float32)
        values: list[str] = list(self._names[attribute][best])
        is_label = np.zeros(n, dtype=bool)
        known = self._known[attribute]
        for i, meta in enumerate(metadata):
            text = label_text(meta, attribute)
            if text is not None:
                values[i] = known.get(text.casefold(), text)
                is_label[i] = True
        conf[is_label] = 1.0
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
