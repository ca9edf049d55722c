"""In-process service over fakes: a small in-memory index, a numpy embedder and the pytest
fixtures that serve them through ``service.app.create_app`` with a ``TestClient``.

No torch, no FAISS, no uvicorn: the app is the real one (routers, schemas, error handlers,
micro-batcher, snapshot leases); only the index and the model behind the protocols of
``service/protocols.py`` are fakes. The fake embedder maps an image to a unit vector from its
mean colour (one fixed projection per attribute), so an upload of a catalog item's image
finds that item first with a score of 1.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageStat
from testkit import image_bytes

from indexer import FORMAT_VERSION
from indexer.filters import Filters, min_confidence_of
from indexer.items import Hit, Item, Rescore, ranked_candidates
from indexer.live.journal import LiveChangesUnavailable
from indexer.live.overlay import LiveStatus
from indexer.manifest import Manifest
from indexer.tagger import ItemTagger
from indexer.tags import FacetCount, value_key
from model.precision import PrecisionChoice, explicit
from model.prototypes import Prototypes, compute_prototypes
from model.tagging import Calibration
from service.app import create_app
from service.protocols import CatalogIndexLike
from service.settings import Settings

with warnings.catch_warnings():  # starlette prefers httpx2, which this project does not use
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

ATTRIBUTES = ("collar", "sleeve", "colour")
N_VALUES = {"collar": 5, "sleeve": 9, "colour": 12}
DIM = 8
INDEX_VERSION = "20260101T000000Z-fake01"
CHECKPOINT_SHA = "f" * 64
ADMIN_KEY = "admin-secret"
API_KEY = "search-secret"

#: (id, RGB colour, metadata) of the fake catalog: 12 distinct colours, 2 items per product
PALETTE = [(230, 30, 30), (30, 200, 40), (40, 40, 220), (240, 220, 30), (200, 40, 200),
           (40, 210, 210), (250, 140, 20), (120, 60, 20), (20, 20, 20), (240, 240, 240),
           (128, 128, 128), (120, 180, 60)]
CATALOG = [(f"sku-{n:02d}", rgb, {"category": "top" if n % 3 else "dress",
                                   "product_id": f"p-{n // 2}", "colour": f"c{n}"})
           for n, rgb in enumerate(PALETTE)]
#: The fake index's value names per attribute; "colour" is a catalog label column (c0..c11),
#: "collar" and "sleeve" are predicted for every item (prototypes made from n % len(names)).
VALUE_NAMES = {"collar": ["round", "v", "square"], "sleeve": ["short", "long"],
               "colour": [f"c{n}" for n in range(len(PALETTE))]}
FAKE_CALIBRATION = Calibration({"collar": 0.05, "sleeve": 0.1, "colour": 0.05}, "fake")


# ------------------------------------------------------------------------ embedder


@dataclass(frozen=True)
class FakeConfig:
    """What the service reads of ``model.config.ModelConfig``."""

    name: str = "fake"


@dataclass(frozen=True)
class FakePrepared:
    """A "preprocessed" image: its mean colour (0..1) and original size."""

    mean: np.ndarray
    size: tuple[int, int]


@dataclass(frozen=True)
class FakeExplanation:
    """The fields of ``model.embedder.Explanation`` the service reads."""

    attention: np.ndarray
    box: tuple[int, int, int, int] | None
    embedding: np.ndarray
    image_size: tuple[int, int]
    input_box: tuple[float, float, float, float] | None = None
    crop_box: tuple[float, float, float, float] | None = None


class FakeEmbedder:
    """Satisfies ``service.protocols.EmbedderLike`` with numpy: colour -> unit vector."""

    def __init__(self, attributes: Sequence[str] = ATTRIBUTES, dim: int = DIM,
                 checkpoint_sha256: str | None = CHECKPOINT_SHA,
                 precision_choice: PrecisionChoice | None = None):
        self._names = list(attributes)
        self._dim = dim
        self.checkpoint_sha256 = checkpoint_sha256
        self.precision_choice = precision_choice or explicit("fp32")
        self.config = FakeConfig()
        self.device = "cpu"
        rng = np.random.default_rng(7)
        self._proj = {a: rng.standard_normal((dim, 4)).astype(np.float32) for a in self._names}
        self.calls = 0   # forward passes (embed_each_prepared)

    @property
    def attribute_names(self) -> list[str]:
        return list(self._names)

    @property
    def dim(self) -> int:
        return self._dim

    def preprocess(self, image: Image.Image) -> FakePrepared:
        mean = np.asarray(ImageStat.Stat(image.convert("RGB")).mean, dtype=np.float32) / 255.0
        return FakePrepared(mean=mean, size=(image.width, image.height))

    def _name(self, attribute: str | int) -> str:
        return self._names[attribute] if isinstance(attribute, int) else attribute

    def vector(self, prepared: FakePrepared, attribute: str | int) -> np.ndarray:
        """The unit embedding of a prepared image for one attribute."""
        features = np.append(prepared.mean - 0.5, 0.1).astype(np.float32)
        v = self._proj[self._name(attribute)] @ features
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed_each_prepared(self, prepared: Sequence[FakePrepared],
                            attributes: Sequence[Sequence[str | int]]) -> list[np.ndarray]:
        self.calls += 1
        return [np.stack([self.vector(p, a) for a in attrs])
                for p, attrs in zip(prepared, attributes, strict=True)]

    def explain_prepared(self, prep: FakePrepared, attribute: str | int) -> FakeExplanation:
        """A uniform 4x4 attention and the box (w/4, h/4)-(w/2, h/2) of the original image."""
        attention = np.full((4, 4), 1.0 / 16.0, dtype=np.float32)
        w, h = prep.size
        return FakeExplanation(attention=attention, box=(w // 4, h // 4, w // 2, h // 2),
                               embedding=self.vector(prep, attribute), image_size=(w, h))


# ------------------------------------------------------------------------ index


def _text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else json.dumps(value)


class FakeIndex:
    """Satisfies ``service.protocols.CatalogIndexLike`` in memory: exact search, filters,
    and live puts/deletes kept in the object (``image_dir`` stores their uploads; with
    ``live=False`` they raise ``LiveChangesUnavailable``, as an index without a journal)."""

    def __init__(self, manifest: Manifest, items: Sequence[Item],
                 vectors: Mapping[str, np.ndarray], image_dir: Path, live: bool = True,
                 prototypes: Prototypes | None = None,
                 calibration: Calibration | None = FAKE_CALIBRATION):
        self.manifest = manifest
        self.live = live
        self._prototypes = prototypes
        self._calibration = calibration if prototypes is not None else None
        self._tagger = None if prototypes is None else ItemTagger(prototypes, calibration)
        self._items: dict[str, Item] = {it.id: it for it in self._tagged(items, vectors)}
        self._vectors: dict[str, dict[str, np.ndarray]] = {
            it.id: {a: np.asarray(vectors[a][n], np.float32) for a in vectors}
            for n, it in enumerate(items)}
        self._image_dir = image_dir
        self._seq = 0
        self._next_row = len(items)
        self.closed = False
        self.fail_writes: Exception | None = None   # raised by put/delete when set
        self.search_params: dict[str, dict[str, int]] = {}

    # -- metadata
    @property
    def version(self) -> str:
        return self.manifest.index_version

    @property
    def attributes(self) -> list[str]:
        return self.manifest.attribute_names

    @property
    def dim(self) -> int:
        return self.manifest.model.dim

    def _check_attribute(self, attribute: str) -> None:
        if attribute not in self.attributes:
            raise KeyError(f"unknown attribute {attribute!r}")

    def size(self, attribute: str) -> int:
        self._check_attribute(attribute)
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def set_search_params(self, attribute: str, **params: int) -> None:
        self._check_attribute(attribute)
        self.search_params[attribute] = dict(params)

    # -- items
    def _ordered(self) -> list[Item]:
        return sorted(self._items.values(), key=lambda it: it.row)

    def list_items(self, offset: int, limit: int) -> tuple[int, list[Item]]:
        items = self._ordered()
        return len(items), items[offset:offset + limit]

    def get(self, item_id: str) -> Item | None:
        return self._items.get(str(item_id))

    def items_by_id(self, item_ids: Sequence[str]) -> dict[str, Item]:
        return {i: self._items[i] for i in map(str, item_ids) if i in self._items}

    def items_by_row(self, rows: Sequence[int]) -> dict[int, Item]:
        by_row = {it.row: it for it in self._items.values()}
        return {int(r): by_row[int(r)] for r in rows if int(r) in by_row}

    def metadata_columns(self) -> frozenset[str]:
        return frozenset(k for it in self._items.values() for k in it.metadata)

    def embedding(self, item_id: str, attribute: str) -> np.ndarray | None:
        self._check_attribute(attribute)
        vecs = self._vectors.get(str(item_id))
        return None if vecs is None else vecs[attribute].copy()

    def embeddings(self, item_ids: Sequence[str], attributes: Sequence[str]
                   ) -> tuple[list[Item], dict[str, np.ndarray]]:
        for a in attributes:
            self._check_attribute(a)
        ids = [i for i in dict.fromkeys(map(str, item_ids)) if i in self._items]
        items = [self._items[i] for i in ids]
        return items, {a: np.array([self._vectors[i][a] for i in ids], np.float32).reshape(
            len(ids), self.dim) for a in attributes}

    def _tagged(self, items: Sequence[Item], vectors: Mapping[str, np.ndarray]) -> list[Item]:
        """The items with their tags (indexer.tagger, as the real index tags them)."""
        if self._tagger is None:
            return list(items)
        tags = self._tagger.tags({a: np.atleast_2d(v) for a, v in vectors.items()},
                                 [it.metadata for it in items])
        return [Item(it.row, it.id, it.image, it.metadata, t)
                for it, t in zip(items, tags, strict=True)]

    def prototypes(self) -> Prototypes | None:
        return self._prototypes

    def calibration(self) -> Calibration | None:
        return self._calibration

    def facets(self, attribute: str, rows: Sequence[int] | None = None,
               min_confidence: float = 0.0) -> list[FacetCount]:
        self._check_attribute(attribute)
        items = self._ordered() if rows is None else list(self.items_by_row(rows).values())
        counts: dict[str, list[int]] = {}
        for it in items:
            tag = it.tags.get(attribute)
            if tag is not None and tag.confidence >= min_confidence:
                counts.setdefault(tag.value, [0, 0])[0 if tag.is_label else 1] += 1
        return [FacetCount(v, lab, pred) for v, (lab, pred) in sorted(counts.items())]

    def _matches(self, item: Item, filters: Filters | None) -> bool:
        min_confidence = min_confidence_of(filters or {})
        for key, want in (filters or {}).items():
            wanted = [want] if isinstance(want, str) else list(want)
            if self._prototypes is not None and key in self._prototypes:
                tag = item.tags.get(key)
                if tag is None or tag.confidence < min_confidence or \
                        value_key(tag.value) not in {value_key(w) for w in wanted}:
                    return False
                continue
            value = item.metadata.get(key)
            if value is None or _text(value) not in wanted:
                return False
        return True

    def allowed_rows(self, filters: Filters) -> np.ndarray:
        return np.array(sorted(it.row for it in self._items.values()
                               if self._matches(it, filters)), dtype=np.int64)

    # -- search
    def _scored(self, attribute: str, query: np.ndarray,
                filters: Filters | None) -> list[tuple[Item, float]]:
        self._check_attribute(attribute)
        items = [it for it in self._ordered() if self._matches(it, filters)]
        scores = [float(self._vectors[it.id][attribute] @ query) for it in items]
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        return [(items[i], scores[i]) for i in order]

    def search(self, attribute: str, vectors: np.ndarray, k: int,
               filters: Filters | None = None) -> list[list[Hit]]:
        q = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        return [[Hit(it, s) for it, s in self._scored(attribute, row, filters)[:max(k, 0)]]
                for row in q]

    def search_many(self, weights: Mapping[str, float], vectors: Mapping[str, np.ndarray],
                    k: int, filters: Filters | None = None,
                    candidates: int | None = None, rescore: Rescore | None = None) -> list[Hit]:
        weights = {a: float(w) for a, w in weights.items() if w}
        items = [it for it in self._ordered() if self._matches(it, filters)]
        if not weights or k <= 0 or not items:
            return []
        stored = {a: np.array([self._vectors[it.id][a] for it in items]) for a in weights}
        per = {a: stored[a] @ np.ravel(vectors[a]) for a in weights}
        # every item is a candidate here, ranked as the real index ranks its candidates
        order, total = ranked_candidates(weights, {a: p.astype(np.float64) for a, p in per.items()},
                                         stored, k, rescore)
        return [Hit(items[i], float(total[i]), {a: float(per[a][i]) for a in weights})
                for i in order]

    def add(self, item: Item, vectors: Mapping[str, np.ndarray]) -> None:
        """Add (or replace) an item directly, e.g. one whose image file is missing (tests)."""
        self._items[item.id] = item
        self._vectors[item.id] = {a: np.asarray(v, np.float32).ravel() for a, v in vectors.items()}

    # -- live changes
    def _check_writable(self) -> None:
        if not self.live:
            raise LiveChangesUnavailable("this index takes no live changes")
        if self.fail_writes is not None:
            raise self.fail_writes

    def put_item(self, item_id: str, image: bytes, metadata: Mapping[str, object],
                 vectors: Mapping[str, np.ndarray]) -> tuple[int, bool]:
        self._check_writable()
        self._seq += 1
        path = self._image_dir / f"live-{self._seq}.img"
        path.write_bytes(image)
        replaced = item_id in self._items
        vecs = {a: np.asarray(v, np.float32).ravel() for a, v in vectors.items()}
        item = Item(self._next_row, item_id, str(path), dict(metadata))
        self._items[item_id] = self._tagged([item], {a: v[None, :] for a, v in vecs.items()})[0]
        self._next_row += 1
        self._vectors[item_id] = vecs
        return self._seq, replaced

    def delete_item(self, item_id: str) -> int | None:
        self._check_writable()
        if item_id not in self._items:
            return None
        self._seq += 1
        del self._items[item_id], self._vectors[item_id]
        return self._seq

    @property
    def image_dirs(self) -> list[Path]:
        return [self._image_dir] if self.live else []

    def live_status(self) -> LiveStatus | None:
        if not self.live:
            return None
        return LiveStatus(journal=str(self._image_dir / "journal.sqlite"), folded_seq=0,
                          applied_seq=self._seq, pending=self._seq, live_items=0,
                          changed_ids=0, stale=False)

    def close(self) -> None:
        self.closed = True


# ------------------------------------------------------------------------ catalog on disk


@dataclass
class FakeCatalog:
    """The catalog images on disk and an INDEX_DIR whose manifest describes the fake index."""

    root: Path
    index_dir: Path
    images: dict[str, Path]
    colours: dict[str, tuple[int, int, int]]
    embedder: FakeEmbedder = field(default_factory=FakeEmbedder)

    def image_bytes(self, item_id: str) -> bytes:
        return self.images[item_id].read_bytes()

    def items(self) -> list[Item]:
        return [Item(n, item_id, str(self.images[item_id]), dict(meta))
                for n, (item_id, _, meta) in enumerate(CATALOG)]

    def open_index(self, folder: Path, live: bool = True) -> FakeIndex:
        """A fresh FakeIndex over ``folder``'s manifest (what ``create_app(open_index=)``
        takes; ``functools.partial(open_index, live=False)``: one without live changes)."""
        items = self.items()
        prepared = [self.embedder.preprocess(Image.new("RGB", (4, 4), self.colours[it.id]))
                    for it in items]
        vectors = {a: np.stack([self.embedder.vector(p, a) for p in prepared])
                   for a in ATTRIBUTES}
        images = Path(tempfile.mkdtemp(prefix="live-", dir=self.root))
        return FakeIndex(Manifest.read(folder), items, vectors, images, live=live,
                         prototypes=fake_prototypes(vectors))


def fake_prototypes(vectors: Mapping[str, np.ndarray]) -> Prototypes:
    """The fake index's value prototypes (VALUE_NAMES), made from the catalog's vectors:
    item n is labelled value n % len(names) (colour: its own colour c<n>)."""
    labels = {a: np.arange(len(CATALOG)) % len(names) for a, names in VALUE_NAMES.items()}
    return compute_prototypes(vectors, labels, "catalog", VALUE_NAMES)


def write_manifest(index_dir: Path, version: str = INDEX_VERSION, n_items: int = len(CATALOG),
                   checkpoint: str = "fake.ckpt") -> None:
    """Write ``manifest.json`` (and the checkpoint file it names) for the fake index."""
    index_dir.mkdir(parents=True, exist_ok=True)
    (index_dir / checkpoint).write_bytes(b"fake checkpoint")
    doc = {
        "format_version": FORMAT_VERSION, "software_version": "test",
        "created_at": "2026-01-01T00:00:00Z", "index_version": version,
        "model": {"checkpoint": checkpoint, "sha256": CHECKPOINT_SHA, "config": None,
                  "dim": DIM, "precision": "fp32"},
        "attributes": [{"name": a, "n_values": N_VALUES[a],
                        "index": {"type": "flat", "params": {}, "file": f"{a}.faiss",
                                  "ntotal": n_items}} for a in ATTRIBUTES],
        "catalog": {"path": "catalog.csv", "sha256": "0" * 64, "items": n_items},
        "rejected": 0,
    }
    (index_dir / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")


def build_catalog(root: Path) -> FakeCatalog:
    """Catalog images (PNG files) under ``root`` and an INDEX_DIR with a manifest."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, colours = {}, {}
    for item_id, rgb, _ in CATALOG:
        path = images_dir / f"{item_id}.png"
        path.write_bytes(image_bytes(rgb))
        images[item_id], colours[item_id] = path, rgb
    index_dir = root / "index"
    write_manifest(index_dir)
    return FakeCatalog(root=root, index_dir=index_dir, images=images, colours=colours)


# ------------------------------------------------------------------------ in-process app


def settings_for(catalog: FakeCatalog, **overrides: Any) -> Settings:
    """Service settings over the fake catalog: no polling, admin on; ``overrides`` win."""
    values: dict[str, Any] = {"index_dir": catalog.index_dir, "reload_interval_s": 0,
                              "admin_api_key": ADMIN_KEY, "batch_max_wait_ms": 0,
                              "decode_concurrency": 2}
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def serve(catalog: FakeCatalog, *, open_index: Callable[[Path], CatalogIndexLike] | None = None,
          embedder: FakeEmbedder | None = None, wait_ready: bool = True,
          **settings: Any) -> Iterator[TestClient]:
    """The real app over the fakes, started (lifespan) and, with ``wait_ready``, serving."""
    model = embedder or catalog.embedder
    app = create_app(settings_for(catalog, **settings),
                     open_index=open_index or catalog.open_index,
                     load_model=lambda path, s: model)
    with TestClient(app, raise_server_exceptions=False) as client:
        if wait_ready:
            state = app.state.service
            deadline = time.monotonic() + 10.0
            while not state.ready:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fake index never loaded: {state.last_error}")
                time.sleep(0.005)
        yield client


def served_index(client: TestClient) -> FakeIndex:
    """The FakeIndex the client's app serves now."""
    snap = client.app.state.service.snapshot   # type: ignore[attr-defined]
    assert snap is not None, "no index loaded"
    assert isinstance(snap.index, FakeIndex)
    return snap.index


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def fake_catalog(tmp_path_factory: pytest.TempPathFactory) -> FakeCatalog:
    """The fake catalog's images and INDEX_DIR (written once per run, never modified)."""
    return build_catalog(tmp_path_factory.mktemp("fake-catalog"))


@pytest.fixture(scope="module")
def app_client(fake_catalog: FakeCatalog) -> Iterator[TestClient]:
    """A client of the app serving a fresh FakeIndex (module-wide: do not change it)."""
    with serve(fake_catalog) as client:
        yield client


@pytest.fixture
def make_client(fake_catalog: FakeCatalog) -> Iterator[Callable[..., TestClient]]:
    """Factory of clients with their own app and index: ``make_client(**settings)`` (plus
    ``open_index=``, ``embedder=``, ``wait_ready=``); closed at the end of the test."""
    with contextlib.ExitStack() as stack:
        def make(**kwargs: Any) -> TestClient:
            return stack.enter_context(serve(fake_catalog, **kwargs))
        yield make
