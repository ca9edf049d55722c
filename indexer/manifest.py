"""The typed `manifest.json` of an index version (docs/ARCHITECTURE.md). Standard library only.

One reader for everyone: the indexer (updates), `indexer.reader.CatalogIndex`, the service
and the freshness check all go through :meth:`Manifest.read`, so a key path exists in one
place. Sections the readers do not interpret (`build`, `update`, `embeddings`, ...) are kept
as plain dicts in :attr:`Manifest.extra`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer import FORMAT_VERSION

MANIFEST = "manifest.json"

#: A parsed JSON object (a section the readers keep as the document has it).
JsonObject = dict[str, Any]


@dataclass
class ModelInfo:
    """The model that made the vectors (None fields: embeddings brought from elsewhere)."""

    dim: int
    checkpoint: str | None = None
    sha256: str | None = None
    config: JsonObject | None = None
    precision: str | None = None

    @classmethod
    def from_dict(cls, doc: JsonObject) -> ModelInfo:
        return cls(dim=int(doc["dim"]), checkpoint=doc.get("checkpoint"),
                   sha256=doc.get("sha256"), config=doc.get("config"),
                   precision=doc.get("precision"))

    def to_dict(self) -> JsonObject:
        return {"checkpoint": self.checkpoint, "sha256": self.sha256, "config": self.config,
                "dim": self.dim, "precision": self.precision}


@dataclass
class IndexInfo:
    """One attribute's FAISS index: its type, parameters, file and size."""

    type: str
    params: JsonObject
    file: str
    ntotal: int
    factory: str | None = None
    memory_bytes: int | None = None      # resident memory estimate (the type's formula)
    selection: JsonObject | None = None  # how --max-memory picked it

    @classmethod
    def from_dict(cls, doc: JsonObject) -> IndexInfo:
        return cls(type=str(doc["type"]), params=dict(doc.get("params") or {}),
                   file=str(doc["file"]), ntotal=int(doc.get("ntotal", 0)),
                   factory=doc.get("factory"), memory_bytes=doc.get("memory_bytes"),
                   selection=doc.get("selection"))

    def to_dict(self) -> JsonObject:
        doc: JsonObject = {"type": self.type, "params": dict(self.params),
                               "factory": self.factory, "file": self.file,
                               "ntotal": self.ntotal}
        if self.memory_bytes is not None:
            doc["memory_bytes"] = self.memory_bytes
        if self.selection is not None:
            doc["selection"] = self.selection
        return doc


@dataclass
class AttributeEntry:
    """An attribute and its index."""

    name: str
    n_values: int | None
    index: IndexInfo

    @classmethod
    def from_dict(cls, doc: JsonObject) -> AttributeEntry:
        n = doc.get("n_values")
        return cls(name=str(doc["name"]), n_values=None if n is None else int(n),
                   index=IndexInfo.from_dict(doc["index"]))

    def to_dict(self) -> JsonObject:
        return {"name": self.name, "n_values": self.n_values, "index": self.index.to_dict()}


@dataclass
class CatalogInfo:
    """The catalog file the index was built from."""

    path: str
    sha256: str
    items: int                  # indexed items
    entries: int | None = None  # catalog rows (indexed + rejected)

    @classmethod
    def from_dict(cls, doc: JsonObject) -> CatalogInfo:
        e = doc.get("entries")
        return cls(path=str(doc["path"]), sha256=str(doc["sha256"]), items=int(doc["items"]),
                   entries=None if e is None else int(e))

    def to_dict(self) -> JsonObject:
        doc: JsonObject = {"path": self.path, "sha256": self.sha256, "items": self.items}
        if self.entries is not None:
            doc["entries"] = self.entries
        return doc


_CORE = ("format_version", "software_version", "created_at", "index_version", "model",
         "attributes", "catalog", "rejected")


@dataclass
class Manifest:
    """Everything `manifest.json` says; `extra` holds the free-form sections."""

    index_version: str
    model: ModelInfo
    attributes: list[AttributeEntry]
    catalog: CatalogInfo
    rejected: int = 0
    created_at: str = ""
    software_version: str = ""
    format_version: int = FORMAT_VERSION
    extra: JsonObject = field(default_factory=dict)

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: object, where: str = MANIFEST) -> Manifest:
        """Check and convert a parsed document (ValueError naming `where` when invalid)."""
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: expected a JSON object")
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{where}: unsupported format_version {version!r} "
                             f"(this software reads {FORMAT_VERSION})")
        for key in ("index_version", "model", "attributes", "catalog"):
            if key not in doc:
                raise ValueError(f"{where}: missing {key!r}")
        try:
            return cls(
                index_version=str(doc["index_version"]),
                model=ModelInfo.from_dict(doc["model"]),
                attributes=[AttributeEntry.from_dict(a) for a in doc["attributes"]],
                catalog=CatalogInfo.from_dict(doc["catalog"]),
                rejected=int(doc.get("rejected", 0)),
                created_at=str(doc.get("created_at", "")),
                software_version=str(doc.get("software_version", "")),
                format_version=int(version),
                extra={k: v for k, v in doc.items() if k not in _CORE})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") \
                from None

    @classmethod
    def read(cls, folder: str | os.PathLike) -> Manifest:
        """Load `folder/manifest.json`: FileNotFoundError when absent, ValueError when invalid."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no index at {folder}: {MANIFEST} not found")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(doc, str(path))

    # -- writing -----------------------------------------------------------------------------
    def to_dict(self) -> JsonObject:
        """The JSON document, core keys first."""
        return {"format_version": self.format_version,
                "software_version": self.software_version, "created_at": self.created_at,
                "index_version": self.index_version, "model": self.model.to_dict(),
                "attributes": [a.to_dict() for a in self.attributes],
                "catalog": self.catalog.to_dict(), "rejected": self.rejected, **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # -- lookups -----------------------------------------------------------------------------
    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def attribute(self, name: str) -> AttributeEntry:
        """The entry of `name` (KeyError listing the valid names)."""
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(f"unknown attribute {name!r}; valid: {', '.join(self.attribute_names)}")

    @property
    def index_type(self) -> str:
        """The index type of the first attribute (all attributes share one type)."""
        return self.attributes[0].index.type if self.attributes else ""

    @property
    def build(self) -> JsonObject:
        return dict(self.extra.get("build") or {})

    @property
    def live_folded_seq(self) -> int:
        """The last journal seq this version contains (live changes after it are read from
        the journal; 0: none folded)."""
        return int((self.extra.get("live") or {}).get("folded_seq", 0))
