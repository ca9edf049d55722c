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
from model.precision import PrecisionChoice  # standard library only, like this module

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
    precision: str | None = None                       # the one the vectors were made in
    precision_choice: PrecisionChoice | None = None    # how it was chosen (--precision auto)

    @classmethod
    def from_dict(cls, doc: JsonObject) -> ModelInfo:
        choice = doc.get("precision_choice")
        return cls(dim=int(doc["dim"]), checkpoint=doc.get("checkpoint"),
                   sha256=doc.get("sha256"), config=doc.get("config"),
                   precision=doc.get("precision"),
                   precision_choice=PrecisionChoice.from_dict(choice) if choice else None)

    def to_dict(self) -> JsonObject:
        doc: JsonObject = {"checkpoint": self.checkpoint, "sha256": self.sha256,
                           "config": self.config, "dim": self.dim, "precision": self.precision}
        if self.precision_choice is not None:
            doc["precision_choice"] = self.precision_choice.to_dict()
        return doc


@dataclass
class TuningInfo:
    """How `build --target-recall` set an index's search-time knobs (indexer/build/tuning.py):
    the cheapest knobs (`params`, also in the index's params) whose recall@10 on `sample`
    of the index's own vectors as queries reached `target`."""

    target: float
    recall: float                 # recall@10 of the chosen knobs on the sample
    stderr: float                 # its standard error over the sample's queries
    sample: int                   # queries (each one's own entry left out of the truth)
    params: JsonObject            # the chosen knobs, e.g. {"nprobe": 54, "k_factor": 100}
    reached: bool = True          # False: no knob setting reached the target (the best taken)
    tried: int = 0                # knob settings evaluated
    seconds: float = 0.0          # time spent tuning (exact neighbours + evaluations)
    n: int = 0                    # vectors in the index when it was tuned
    drift: int = 0                # rows added or removed by updates since then
    status: str = "tuned"         # "tuned" in this version, "kept" from an earlier one

    @classmethod
    def from_dict(cls, doc: JsonObject) -> TuningInfo:
        return cls(target=float(doc["target"]), recall=float(doc["recall"]),
                   stderr=float(doc.get("stderr", 0.0)), sample=int(doc["sample"]),
                   params=dict(doc.get("params") or {}), reached=bool(doc.get("reached", True)),
                   tried=int(doc.get("tried", 0)), seconds=float(doc.get("seconds", 0.0)),
                   n=int(doc.get("n", 0)), drift=int(doc.get("drift", 0)),
                   status=str(doc.get("status", "tuned")))

    def to_dict(self) -> JsonObject:
        return {"target": self.target, "recall": self.recall, "stderr": self.stderr,
                "sample": self.sample, "params": dict(self.params), "reached": self.reached,
                "tried": self.tried, "seconds": self.seconds, "n": self.n, "drift": self.drift,
                "status": self.status}


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
    tuning: TuningInfo | None = None     # how --target-recall set its search knobs

    @classmethod
    def from_dict(cls, doc: JsonObject) -> IndexInfo:
        tuning = doc.get("tuning")
        return cls(type=str(doc["type"]), params=dict(doc.get("params") or {}),
                   file=str(doc["file"]), ntotal=int(doc.get("ntotal", 0)),
                   factory=doc.get("factory"), memory_bytes=doc.get("memory_bytes"),
                   selection=doc.get("selection"),
                   tuning=None if tuning is None else TuningInfo.from_dict(tuning))

    def to_dict(self) -> JsonObject:
        doc: JsonObject = {"type": self.type, "params": dict(self.params),
                               "factory": self.factory, "file": self.file,
                               "ntotal": self.ntotal}
        if self.memory_bytes is not None:
            doc["memory_bytes"] = self.memory_bytes
        if self.selection is not None:
            doc["selection"] = self.selection
        if self.tuning is not None:
            doc["tuning"] = self.tuning.to_dict()
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
    def tags_file(self) -> str | None:
        """The version's prototypes file (indexer/prototype_file.py); None: no tags."""
        name = (self.extra.get("tags") or {}).get("prototypes")
        return None if name is None else str(name)

    @property
    def live_folded_seq(self) -> int:
        """The last journal seq this version contains (live changes after it are read from
        the journal; 0: none folded)."""
        return int((self.extra.get("live") or {}).get("folded_seq", 0))
