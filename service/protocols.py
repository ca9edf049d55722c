"""What the service needs of its index and its embedder: the one seam it depends on.

:class:`indexer.reader.CatalogIndex` and :class:`model.embedder.Embedder` satisfy these
structural types; any other implementation with the same members (a fake in the tests, a
remote model) can be served. Nothing in the service probes a capability: an index that
takes no live changes still has ``put_item``/``delete_item`` (they raise
:class:`indexer.live.journal.LiveChangesUnavailable`) and answers ``live_status()`` with None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from indexer.filters import Filters
from indexer.items import Hit, Item, Rescore
from indexer.live.overlay import LiveStatus
from indexer.manifest import Manifest
from indexer.tags import FacetCount

if TYPE_CHECKING:  # torch only for the type checker: importing the service loads no model
    import torch

    from model.config import ModelConfig
    from model.embedder import Explanation
    from model.precision import PrecisionChoice
    from model.preprocess import PreparedImage
    from model.prototypes import Prototypes
    from model.tagging import Calibration


@runtime_checkable
class CatalogIndexLike(Protocol):
    """One served index version with its live changes (docs/ARCHITECTURE.md, "Reading API").

    Every call may read the journal: the service makes them on the snapshot's index threads.
    """

    @property
    def manifest(self) -> Manifest: ...

    @property
    def version(self) -> str: ...

    @property
    def attributes(self) -> list[str]: ...

    @property
    def dim(self) -> int: ...

    @property
    def image_dirs(self) -> list[Path]:
        """Folders holding images the index stored itself (live puts); [] without any."""
        ...

    def size(self, attribute: str) -> int: ...

    def __len__(self) -> int: ...

    def set_search_params(self, attribute: str, **params: int) -> None: ...

    def get(self, item_id: str) -> Item | None: ...

    def items_by_id(self, item_ids: Sequence[str]) -> dict[str, Item]: ...

    def items_by_row(self, rows: list[int]) -> dict[int, Item]: ...

    def list_items(self, offset: int, limit: int) -> tuple[int, list[Item]]: ...

    def metadata_columns(self) -> frozenset[str]: ...

    def allowed_rows(self, filters: Filters) -> np.ndarray: ...

    def embedding(self, item_id: str, attribute: str) -> np.ndarray | None: ...

    def prototypes(self) -> Prototypes | None:
        """The index's value prototypes (the catalog's labels merged over the checkpoint's);
        None for an index built without tags."""
        ...

    def calibration(self) -> Calibration | None:
        """The tag confidences' calibration (the checkpoint's); None without tags."""
        ...

    def facets(self, attribute: str, rows: Sequence[int] | None = None,
               min_confidence: float = 0.0) -> list[FacetCount]:
        """Per value of a tagged attribute: items labelled with it and items predicted it
        with at least ``min_confidence``, over ``rows`` (default: every item); [] for an
        attribute without tags, KeyError for an unknown one."""
        ...

    def embeddings(self, item_ids: Sequence[str], attributes: Sequence[str]
                   ) -> tuple[list[Item], dict[str, np.ndarray]]:
        """The known items among ``item_ids`` and their stored vectors [n, D] per attribute."""
        ...

    def search(self, attribute: str, vectors: np.ndarray, k: int,
               filters: Filters | None = None) -> list[list[Hit]]:
        """Top-k hits per query row on one attribute (a list filter value: any of)."""
        ...

    def search_many(self, weights: dict[str, float], vectors: dict[str, np.ndarray], k: int,
                    filters: Filters | None = None, candidates: int | None = None,
                    rescore: Rescore | None = None) -> list[Hit]:
        """Hits by the weighted sum of per-attribute inner products, or by ``rescore`` of the
        candidates' stored vectors (-inf: left out); ``Hit.scores`` set."""
        ...

    def put_item(self, item_id: str, image: bytes, metadata: dict[str, object],
                 vectors: dict[str, np.ndarray]) -> tuple[int, bool]:
        """Journal a put: (its seq, whether an item was replaced); JournalError."""
        ...

    def delete_item(self, item_id: str) -> int | None:
        """Journal a delete: its seq, or None for an unknown id; JournalError."""
        ...

    def live_status(self) -> LiveStatus | None:
        """The journal and what this version applies of it; None: no live changes."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class EmbedderLike(Protocol):
    """The model: preprocessing, batched embedding with one trunk pass per image, explain."""

    @property
    def attribute_names(self) -> list[str]: ...

    @property
    def dim(self) -> int: ...

    @property
    def config(self) -> ModelConfig: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def checkpoint_sha256(self) -> str | None:
        """sha256 of the checkpoint file it was loaded from (None: unknown)."""
        ...

    @property
    def precision_choice(self) -> PrecisionChoice:
        """The precision it runs in, the one asked for (ASEN_PRECISION) and why."""
        ...

    @property
    def preprocess(self) -> Callable[[Image.Image], PreparedImage]:
        """Decoded RGB image -> model input (runs on the decode threads)."""
        ...

    def embed_each_prepared(self, prepared: Sequence[PreparedImage],
                            attributes: Sequence[Sequence[str | int]]) -> list[np.ndarray]:
        """Image i for each attribute of ``attributes[i]``: one [len, dim] array per image."""
        ...

    def explain_prepared(self, prep: PreparedImage, attribute: str | int) -> Explanation: ...
