"""Read an index: the API the search service uses (docs/ARCHITECTURE.md, "Reading API").

`CatalogIndex` composes over one published version (`indexer.published.PublishedIndex`,
immutable) and merges the live changes of the journal beside INDEX_DIR into every read, as
FAISS composes `IndexIDMap` or `IndexRefine` over a base index. Each read takes the live
view once (`_view`, which polls the journal), asks the published version without the rows
the view hides, and merges the live items in through the view (`LiveView.merge_*`,
indexer/live/overlay.py).

`CatalogIndex.open(INDEX_DIR)` resolves the INDEX_DIR symlink once and reads every file from
that one version, so a concurrent rebuild (which swaps the link) never mixes versions.
Nothing here imports torch or tqdm.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from indexer.filters import Filters
from indexer.items import Hit, Item, Rescore, read_item_hashes
from indexer.live.journal import Journal, LiveChangesUnavailable
from indexer.live.overlay import LiveOverlay, LiveStatus, LiveView
from indexer.manifest import Manifest
from indexer.published import PublishedIndex
from indexer.tagger import ItemTagger
from indexer.tags import FacetCount
from model.prototypes import Prototypes
from model.tagging import Calibration

__all__ = ["CatalogIndex", "Hit", "Item", "LiveStatus", "read_item_hashes"]


class CatalogIndex:
    """One published index version with the live changes of its journal merged into every
    read. Without a journal it serves the published version as it is, and
    put_item/delete_item raise LiveChangesUnavailable."""

    def __init__(self, published: PublishedIndex, journal: Journal | None = None) -> None:
        self.published = published
        self.root: Path = published.root            # the version folder (INDEX_DIR resolved)
        self.manifest: Manifest = published.manifest
        manifest = published.manifest
        self._empty = LiveView(manifest.live_folded_seq, tagged=published.tagged)
        prototypes = published.prototypes()
        tagger = None if prototypes is None else ItemTagger(prototypes, published.calibration())
        self._live = None if journal is None else LiveOverlay(
            journal, manifest.live_folded_seq, manifest.attribute_names, manifest.model.dim,
            manifest.model.sha256, published.rows_of, tagger, published.tagged)

    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], journal: Journal | None = None
             ) -> CatalogIndex:
        """Open the version INDEX_DIR points to now (FileNotFoundError / ValueError if bad).

        `journal`: the live-changes journal (default: the one beside INDEX_DIR, found from
        INDEX_DIR or from a version folder; absent is fine: no live changes yet)."""
        return cls(PublishedIndex.open(index_dir), journal or Journal.of(index_dir))

    def _view(self) -> LiveView:
        """The live changes now: every read takes it once, first (polls the journal)."""
        return self._empty if self._live is None else self._live.view()

    # -- metadata --------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.published.version

    @property
    def attributes(self) -> list[str]:
        return self.published.attributes

    @property
    def dim(self) -> int:
        return self.published.dim

    def set_search_params(self, attribute: str, **params: int) -> None:
        """Change an attribute's search-time knobs in this process only (see
        PublishedIndex.set_search_params)."""
        self.published.set_search_params(attribute, **params)

    def size(self, attribute: str) -> int:
        """Number of searchable vectors of an attribute (live changes included)."""
        base = self.published.size(attribute)
        return self._view().merge_size(base, attribute)

    def __len__(self) -> int:
        return self._view().merge_size(len(self.published))

    # -- items -----------------------------------------------------------------------------
    @property
    def live(self) -> LiveView:
        """The live changes merged into reads now (polls the journal)."""
        return self._view()

    def items_by_row(self, rows: Sequence[int]) -> dict[int, Item]:
        """Items of the given FAISS ids (or live rows, >= LIVE_ROW0)."""
        view = self._view()
        wanted = [int(r) for r in rows]
        return view.merge_rows(self.published.items_by_row(view.base_rows(wanted)), wanted)

    def list_items(self, offset: int, limit: int) -> tuple[int, list[Item]]:
        """(total item count, one page of items): the published version's in row order,
        then the live ones in the order they were put."""
        view = self._view()
        total, page = self.published.list_items(offset, limit, view.hidden_rows)
        return view.merge_page(total, page, offset, limit)

    def get(self, item_id: str) -> Item | None:
        """The item with this catalog id, or None."""
        return self.items_by_id([item_id]).get(str(item_id))

    def items_by_id(self, item_ids: Sequence[str]) -> dict[str, Item]:
        """Items of the given catalog ids (ids not in the index are absent)."""
        return self._by_id(self._view(), _unique(item_ids))

    def _by_id(self, view: LiveView, ids: list[str]) -> dict[str, Item]:
        return view.merge_ids(self.published.items_by_id(view.base_ids(ids)), ids)

    def embeddings(self, item_ids: Sequence[str], attributes: Sequence[str]
                   ) -> tuple[list[Item], dict[str, np.ndarray]]:
        """The items among `item_ids` (first occurrences, in order; unknown ids left out)
        and their stored vectors per attribute, [len(items), D] float32 (float16-exact for
        ivfpq_refine, the PQ approximation for ivfpq)."""
        for a in attributes:
            self.published.faiss_index(a)          # KeyError for an unknown attribute
        view = self._view()
        ids = _unique(item_ids)
        return view.merge_embeddings(self._by_id(view, ids), ids, attributes,
                                     self.published.vectors, self.dim)

    def metadata_columns(self) -> frozenset[str]:
        """Every metadata key of the items (the published version's, computed once, plus
        the live items')."""
        view = self._view()
        columns = self.published.metadata_columns()
        return columns | view.columns() if view else columns

    def embedding(self, item_id: str, attribute: str) -> np.ndarray | None:
        """The stored embedding of an item (float16 for ivfpq_refine, approximate for ivfpq)."""
        self.published.faiss_index(attribute)
        view = self._view()
        item_id = str(item_id)
        if item_id in view.items:
            vec = view.items[item_id].vectors.get(attribute)
            return None if vec is None else np.array(vec, dtype=np.float32)
        if item_id in view.touched:
            return None
        return self.published.embedding(item_id, attribute)

    def allowed_rows(self, filters: Filters) -> np.ndarray:
        """Rows whose metadata matches every filter (a list value means any of), live
        items' rows included, sorted."""
        view = self._view()
        return view.merge_allowed(self.published.allowed_rows(filters), filters)

    # -- tags --------------------------------------------------------------------------------
    def prototypes(self) -> Prototypes | None:
        """The version's value prototypes (the catalog's labels merged over the checkpoint's);
        None for an index built without tags."""
        return self.published.prototypes()

    def calibration(self) -> Calibration | None:
        """The calibration of the tags' confidences (the checkpoint's); None without tags."""
        return self.published.calibration()

    def facets(self, attribute: str, rows: Sequence[int] | None = None,
               min_confidence: float = 0.0) -> list[FacetCount]:
        """Per value of a tagged attribute, the items labelled with it and those predicted it
        with at least `min_confidence`, over `rows` (default: every item, live ones
        included); [] for an attribute without tags (KeyError: unknown attribute)."""
        self.published.faiss_index(attribute)
        view = self._view()
        wanted = None if rows is None else [int(r) for r in rows]
        base = self.published.facet_counts(
            attribute, None if wanted is None else view.base_rows(wanted),
            view.hidden_rows if wanted is None else None, min_confidence)
        return view.merge_facets(base, attribute, wanted, min_confidence)

    # -- search ----------------------------------------------------------------------------
    def search(self, attribute: str, vectors: np.ndarray, k: int,
               filters: Filters | None = None) -> list[list[Hit]]:
        """Top-k items per query vector by inner product for one attribute: the published
        version's (FAISS, without the rows live changes hide) merged with the live items'
        (exact)."""
        q = self.published.query_matrix(vectors)
        view = self._view()
        base = self.published.search(attribute, q, k, filters, view.hidden_rows)
        return view.merge_search(base, attribute, q, k, filters)

    def search_many(self, weights: Mapping[str, float], vectors: Mapping[str, np.ndarray],
                    k: int, filters: Filters | None = None, candidates: int | None = None,
                    rescore: Rescore | None = None) -> list[Hit]:
        """Items ranked by the weighted sum of their per-attribute inner products, or by
        `rescore` of their stored vectors of the weighted attributes (a -inf score leaves an
        item out); each hit has its per-attribute scores.

        Candidates are the union of each attribute's top `candidates` (default max(10k, 100);
        all items when the index is that small), rescored exactly against the stored vectors,
        plus every live item (scored exactly).
        """
        weights = {a: float(w) for a, w in weights.items() if w}
        if not weights or k <= 0:
            return []
        queries = self.published.query_vectors(weights, vectors)
        view = self._view()
        base = self.published.search_many(weights, queries, k, filters, candidates,
                                          view.hidden_rows, rescore)
        return view.merge_many(base, weights, queries, k, filters, rescore)

    # -- live changes ------------------------------------------------------------------------
    def _overlay(self) -> LiveOverlay:
        if self._live is None:
            raise LiveChangesUnavailable(f"index {self.root} was opened without a journal")
        return self._live

    def put_item(self, item_id: str, image: bytes, metadata: Mapping[str, object],
                 vectors: Mapping[str, np.ndarray]) -> tuple[int, bool]:
        """Put (add or replace) an item in the journal: searchable at once here and, on
        their next read, in every reader of this INDEX_DIR. `vectors`: attribute -> [D]
        for every attribute. Returns (seq, whether an item with this id was replaced);
        JournalError when the journal cannot be written (LiveChangesUnavailable: none)."""
        return self._overlay().put(str(item_id), image, dict(metadata), vectors)

    def delete_item(self, item_id: str) -> int | None:
        """Delete an item through the journal; its seq, or None when no item has the id
        (LiveChangesUnavailable without a journal)."""
        return self._overlay().delete(str(item_id))

    @property
    def image_dirs(self) -> list[Path]:
        """Folders holding images this index stored itself (the live puts' uploads)."""
        return [] if self._live is None else [self._live.journal.images]

    def live_status(self) -> LiveStatus | None:
        """The journal and what this version applies of it (None: no journal)."""
        return None if self._live is None else self._live.status()

    def close(self) -> None:
        """Release the database connections and the indexes."""
        if self._live is not None:
            self._live.close()
        self.published.close()

    def __enter__(self) -> CatalogIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unique(ids: Sequence[str]) -> list[str]:
    """The ids as strings, first occurrences, in order."""
    return list(dict.fromkeys(str(i) for i in ids))
