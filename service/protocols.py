"""What the service needs of its index and its embedder (structural types).

:class:`indexer.reader.CatalogIndex` and :class:`model.embedder.Embedder` satisfy them; the
service depends on these seams only, so any other implementation with the same methods
(an index with a live-changes overlay, a remote model) can be served.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from indexer.manifest import Manifest


@runtime_checkable
class ItemLike(Protocol):
    """A catalog item: its FAISS row, id, image path and metadata."""

    row: int
    id: str
    image: str
    metadata: dict


Hits = list[tuple[Any, float]]


@runtime_checkable
class CatalogIndexLike(Protocol):
    """One served index version (see docs/ARCHITECTURE.md, "Reading API")."""

    manifest: Manifest

    @property
    def version(self) -> str: ...

    @property
    def attributes(self) -> list[str]: ...

    @property
    def dim(self) -> int: ...

    def size(self, attribute: str) -> int: ...

    def __len__(self) -> int: ...

    def get(self, item_id: str) -> Any | None: ...

    def list_items(self, offset: int, limit: int) -> tuple[int, list[Any]]: ...

    def embedding(self, item_id: str, attribute: str) -> np.ndarray | None: ...

    def embeddings(self, item_ids: Sequence[str], attributes: Sequence[str]
                   ) -> tuple[list[Any], dict[str, np.ndarray]]: ...

    def metadata_columns(self) -> frozenset[str]: ...

    def search(self, attribute: str, vectors: np.ndarray, k: int,
               filters: dict[str, str] | None = None) -> list[Hits]: ...

    def search_many(self, weights: dict[str, float], vectors: dict[str, np.ndarray], k: int,
                    filters: dict[str, str] | None = None, candidates: int | None = None
                    ) -> list[tuple[Any, float, dict[str, float]]]: ...

    def close(self) -> None: ...


@runtime_checkable
class EmbedderLike(Protocol):
    """The model: preprocessing, batched embedding with one trunk pass per image, explain.

    ``checkpoint_sha256`` (set by :func:`model.load_model`) is read when present.
    """

    @property
    def attribute_names(self) -> list[str]: ...

    @property
    def dim(self) -> int: ...

    @property
    def config(self) -> Any: ...

    device: Any

    preprocess: Callable[[Image.Image], Any]   # PIL image -> prepared (model input) image

    def embed(self, images: Sequence[Image.Image],
              attributes: Sequence[str | int]) -> np.ndarray: ...

    def embed_each_prepared(self, prepared: Sequence[Any],
                            attributes: Sequence[Sequence[str | int]]) -> list[np.ndarray]: ...

    def explain(self, image: Image.Image, attribute: str | int) -> Any: ...

    def explain_prepared(self, prepared: Any, attribute: str | int) -> Any: ...
