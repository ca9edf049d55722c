"""The catalog item every reader returns (`indexer.reader.Item` re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    """One indexed catalog item; `row` is its FAISS id (a live item's: LIVE_ROW0 + seq)."""

    row: int
    id: str
    image: str
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
