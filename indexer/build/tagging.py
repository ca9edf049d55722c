"""Build-time tags (issue 22): the catalog's value prototypes and every item's tag per
attribute, made while each attribute's index is built, from the vectors it already holds.

Per attribute: the catalog's labels (a metadata column named after the attribute, trimmed and
case-insensitive, matched to the checkpoint's value names; a name the checkpoint does not know
becomes a new value of the catalog's) make catalog prototypes (the normalised mean vector of
each value's items), which win over the checkpoint's (`model.prototypes.merge_prototypes`);
then every item is tagged in chunks (indexer/tagger.py). The checkpoint's calibration gives the
confidences. An attribute with neither checkpoint nor catalog prototypes gets no tags.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.build.tuning import Vectors
from indexer.items import TagRow, write_tags
from indexer.prototype_file import write_prototypes_file
from indexer.tagger import ItemTagger, TagTable, label_text, tag_rows
from model.prototypes import AttributePrototypes, Prototypes, ValuePrototype, merge_prototypes
from model.tagging import Calibration

log = logging.getLogger(__name__)
CHUNK = 65_536      # vectors read and tagged at a time


def catalog_labels(metadata: Sequence[Mapping[str, object]], attribute: str,
                   base: AttributePrototypes | None) -> tuple[np.ndarray, dict[int, str]]:
    """Value index per item (-1: unlabelled) and the names of the values used; names the
    checkpoint does not know get new indices after its own (in sorted order)."""
    known = {} if base is None else {p.name.strip().casefold(): p.value for p in base.values}
    texts = [label_text(m, attribute) for m in metadata]
    new = sorted({t.casefold(): t for t in reversed([t for t in texts if t is not None])
                  if t.casefold() not in known}.items())
    start = max(known.values(), default=-1) + 1
    index = dict(known)
    names = {} if base is None else {p.value: p.name for p in base.values}
    for n, (key, text) in enumerate(new):
        index[key] = start + n
        names[start + n] = text
    labels = np.array([-1 if t is None else index[t.casefold()] for t in texts], np.int64)
    return labels, names


def catalog_prototypes(attribute: str, vectors: Vectors, labels: np.ndarray,
                       names: Mapping[int, str]) -> AttributePrototypes:
    """The normalised mean vector of each labelled value's items (read in chunks)."""
    values = np.unique(labels[labels >= 0])
    if not len(values):
        return AttributePrototypes(attribute, ())
    slot = np.full(int(values.max()) + 1, -1, np.int64)
    slot[values] = np.arange(len(values))
    sums: np.ndarray | None = None
    for s in range(0, len(labels), CHUNK):
        lab = labels[s:s + CHUNK]
        pos = np.nonzero(lab >= 0)[0]
        if not len(pos):
            continue
        # a contiguous read (an index's stored vectors read fastest so), then the labelled
        vecs = np.asarray(vectors.get(np.arange(s, s + len(lab)))[pos], np.float64)
        if sums is None:
            sums = np.zeros((len(values), vecs.shape[1]))
        np.add.at(sums, slot[lab[pos]], vecs)
    assert sums is not None
    counts = np.bincount(slot[labels[labels >= 0]], minlength=len(values))
    norms = np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    unit = (sums / norms).astype(np.float32)
    return AttributePrototypes(attribute, tuple(
        ValuePrototype(int(v), names[int(v)], unit[n], int(counts[n]), "catalog")
        for n, v in enumerate(values)))


def checkpoint_value_space(checkpoint: str | None, sha256: str | None
                           ) -> tuple[Prototypes | None, Calibration | None]:
    """The prototypes and calibration the model's checkpoint keeps; (None, None) when it
    keeps none, is not at `checkpoint` any more, or is another file than the one that made
    the vectors (`sha256`)."""
    if checkpoint is None or not Path(checkpoint).is_file():
        log.warning("tags: checkpoint %s not found: catalog prototypes only, uncalibrated",
                    checkpoint)
        return None, None
    from model.osutil import sha256_file
    from model.prototypes import read_prototypes

    if sha256 is not None and sha256_file(checkpoint) != sha256:
        log.warning("tags: %s is not the model that made the vectors: catalog prototypes "
                    "only, uncalibrated", checkpoint)
        return None, None
    return read_prototypes(checkpoint)


@dataclass
class BuildTags:
    """The tags of one build, gathered attribute by attribute (`add`), then written."""

    base: Prototypes | None                      # the checkpoint's prototypes
    calibration: Calibration | None              # the checkpoint's calibration
    checkpoint: str | None                       # where they came from
    metadata: Mapping[int, Mapping[str, object]]  # row -> the item's metadata
    prototypes: dict[str, AttributePrototypes] = field(default_factory=dict)
    tables: list[tuple[np.ndarray, TagTable]] = field(default_factory=list)

    def add(self, attribute: str, vectors: Vectors) -> None:
        """Make the attribute's prototypes and tag every item of `vectors`."""
        rows = np.asarray(vectors.ids, np.int64)
        meta = [self.metadata[int(r)] for r in rows]
        base = self.base.attributes.get(attribute) if self.base is not None else None
        labels, names = catalog_labels(meta, attribute, base)
        catalog = catalog_prototypes(attribute, vectors, labels, names)
        merged = merge_prototypes(Prototypes({attribute: base} if base else {}),
                                  Prototypes({attribute: catalog} if catalog.values else {}))
        if attribute not in merged:
            log.info("tags: no prototypes for %s (no checkpoint prototypes, no catalog "
                     "labels): not tagged", attribute)
            return
        self.prototypes[attribute] = merged[attribute]
        tagger = ItemTagger(Prototypes({attribute: merged[attribute]}), self.calibration)
        for s in range(0, len(rows), CHUNK):
            pos = np.arange(s, min(s + CHUNK, len(rows)))
            self.tables.append((rows[pos], tagger.table(attribute, vectors.get(pos),
                                                        meta[s:s + CHUNK])))

    def rows(self) -> Iterator[TagRow]:
        for rows, table in self.tables:
            yield from tag_rows(rows, [table])

    def write(self, folder: Path) -> dict[str, Any]:
        """The tags table and prototypes.json of the version; the manifest's `tags` section."""
        write_tags(folder, self.rows())
        name = write_prototypes_file(folder, Prototypes(self.prototypes), self.calibration)
        return self.section(name)

    def section(self, name: str) -> dict[str, Any]:
        """Where every prototype came from and how many items made it, and the tags'
        labelled / predicted counts per attribute."""
        counts: dict[str, dict[str, int]] = {}
        for _, table in self.tables:
            c = counts.setdefault(table.attribute, {"labelled": 0, "predicted": 0})
            c["labelled"] += int(table.is_label.sum())
            c["predicted"] += int((~table.is_label).sum())
        cal = self.calibration
        return {"prototypes": name, "checkpoint": self.checkpoint,
                "calibration": None if cal is None else {
                    "fitted_on": cal.fitted_on, "method": cal.method,
                    "temperatures": dict(cal.temperatures)},
                "values": Prototypes(self.prototypes).summary(), "items": counts}


__all__ = ["BuildTags", "catalog_labels", "catalog_prototypes", "checkpoint_value_space"]
