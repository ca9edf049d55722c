"""Folding the live-changes journal into a new index version.

Live changes are a layer over the catalog file: a live put overrides (or adds) the catalog
row with its id, a live delete hides it. Each version keeps the whole layer in `live.jsonl`
(one JSON object per id: `id`, `op`, `seq`, and for a put `image` (a file name in the
journal's `images/`), `metadata`, `sha256`), so the changes outlive the fold: the next build
applies them to the catalog again. A layer entry goes away when the catalog catches up: a
delete whose id left the catalog, a put whose id the catalog now has with the same image
bytes and metadata (compared as the catalog holds it: see :func:`same_metadata`).

A fold (the one-shot command, full or `--update`) reads the journal up to its last seq S
(under the INDEX_DIR lock; puts keep arriving), adds those entries to the published layer,
builds the layered catalog like any other (the live items' images are re-embedded from the
journal's stored copies, with the indexer's model, device and precision, so one version
never mixes vectors of two runs; with `--update` unchanged ones are skipped as usual),
publishes the version with `live.folded_seq = S`, and then, in one journal transaction,
moves the entries <= S to `folded` (the journal is empty but for puts that arrived during
the build) and drops the folded entries of the version before. A live item that the build
rejected is appended to the journal again (still searchable by its stored vectors).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from indexer.catalog import Catalog, CatalogError, CatalogItem
from indexer.layout import IndexLayout
from indexer.live.journal import Journal
from indexer.manifest import Manifest
from model.osutil import atomic_write_bytes, sha256_file

LAYER = "live.jsonl"
log = logging.getLogger(__name__)


class AllItemsDeleted(CatalogError):
    """The live deletes leave no item: there is nothing to build an index of."""


@dataclass(frozen=True)
class LayerEntry:
    """One id's live change as kept in a version's layer."""

    id: str
    op: str                        # "put" | "delete"
    seq: int
    image: str | None = None       # file name under the journal's images/
    metadata: dict[str, Any] | None = None
    sha256: str | None = None


def read_layer(folder: Path | None) -> dict[str, LayerEntry]:
    """The layer of an index version ({} when it has none)."""
    path = None if folder is None else Path(folder) / LAYER
    if path is None or not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            e = LayerEntry(**json.loads(line))
            out[e.id] = e
    return out


def _file_sha(path: str) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


@dataclass
class Fold:
    """The journal entries one build folds, and the layer it publishes."""

    journal: Journal
    base_seq: int                  # live.folded_seq of the published version
    upto: int                      # the last seq this build folds
    layer: dict[str, LayerEntry]
    previous_images: set[str] = field(default_factory=set)
    journal_puts: dict[str, int] = field(default_factory=dict)   # id -> seq folded now
    changes: int = 0               # journal entries in (base_seq, upto]

    @property
    def has_changes(self) -> bool:
        return bool(self.layer) or self.changes > 0

    def _item(self, e: LayerEntry) -> CatalogItem:
        return CatalogItem(e.id, str(self.journal.images / str(e.image)), dict(e.metadata or {}))

    def apply(self, catalog: Catalog) -> Catalog:
        """The catalog with the layer applied (same path and sha256: the file's);
        AllItemsDeleted when the live deletes leave no item (nothing is changed)."""
        if not self.layer:
            return catalog
        items = []
        for it in catalog.items:
            e = self.layer.get(it.id)
            if e is None:
                items.append(it)
            elif e.op == "put":
                items.append(self._item(e))
        ids = {it.id for it in catalog.items}
        added = sorted((e for e in self.layer.values() if e.op == "put" and e.id not in ids),
                       key=lambda e: e.seq)
        items += [self._item(e) for e in added]
        if not items:
            self._refuse_empty(catalog)
        return Catalog(catalog.path, items, catalog.sha256)

    def _refuse_empty(self, catalog: Catalog) -> None:
        deletes = sum(e.op == "delete" for e in self.layer.values())
        raise AllItemsDeleted(
            f"live changes deleted every item: all {len(catalog)} item(s) of the catalog "
            f"{catalog.path} are deleted live ({deletes} live delete(s), journal "
            f"{self.journal.db}) and no live put is left, so there is nothing to index; "
            "nothing was built or published (the served version and the journal are kept). "
            "Put an item (PUT /v1/admin/items/{id}) or add rows to the catalog, then run "
            "the indexer again")

    def write(self, staging: Path) -> None:
        """`live.jsonl` of the new version (when the layer has entries)."""
        if self.layer:
            lines = [json.dumps(asdict(e), ensure_ascii=False, sort_keys=True)
                     for e in sorted(self.layer.values(), key=lambda e: e.seq)]
            atomic_write_bytes(staging / LAYER, ("\n".join(lines) + "\n").encode())

    def manifest_section(self) -> dict[str, Any]:
        ops = [e.op for e in self.layer.values()]
        return {"folded_seq": self.upto, "folded_now": self.changes,
                "puts": ops.count("put"), "deletes": ops.count("delete"),
                "journal": str(self.journal.db)}

    def commit(self, rejected: set[str]) -> None:
        """After the publish: move the folded entries out of the journal, re-append the
        live puts the build rejected, delete images nothing refers to any more."""
        if not self.journal.exists():
            return
        try:
            con = self.journal.connect()
            try:
                with Journal.transaction(con):
                    carried = 0
                    for item_id in sorted(rejected & self.journal_puts.keys()):
                        seq = self.journal_puts[item_id]
                        if not con.execute("SELECT 1 FROM entries WHERE id = ? AND seq > ?",
                                           (item_id, seq)).fetchone():
                            Journal.reappend(con, seq)
                            carried += 1
                    Journal.fold(con, self.upto, self.base_seq)
                    keep = {e.image for e in self.layer.values() if e.image}
                    removed = self.journal.collect_images(con, keep | self.previous_images)
            finally:
                con.close()
        except Exception as exc:  # noqa: BLE001 - the version is published already
            log.warning("warning: the new version is published but the journal %s was not "
                        "cleaned (%s: %s); the next build retries",
                        self.journal.db, type(exc).__name__, exc)
            return
        if self.changes or carried or removed:
            log.info("live changes: folded %d journal entries (up to seq %d)%s%s",
                     self.changes, self.upto,
                     f", {carried} rejected live item(s) kept in the journal" if carried else "",
                     f", {removed} unused image(s) deleted" if removed else "")


def catalog_text(value: object) -> str:
    """A metadata value as a CSV catalog holds it: text as it is, null as an empty cell,
    anything else (number, boolean, list, object) as its JSON text (`3`, `9.5`, `true`)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def same_metadata(catalog: Mapping[str, object], put: Mapping[str, object]) -> bool:
    """Whether a catalog row's metadata is a live put's: every key with an equal JSON value,
    or, where the catalog holds text (a CSV catalog holds nothing else), the put's value as
    :func:`catalog_text` writes it, a key the put lacks matching an empty cell."""
    for key in catalog.keys() | put.keys():
        if key not in catalog:
            return False
        have, want = catalog[key], put.get(key)
        if isinstance(have, str):
            if have != catalog_text(want):
                return False
        elif key not in put or _json(have) != _json(want):
            return False
    return True


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def _prune(layer: dict[str, LayerEntry], catalog: Catalog) -> dict[str, LayerEntry]:
    """Drop the entries the catalog has caught up with."""
    rows = {it.id: it for it in catalog.items}
    out = {}
    for item_id, e in layer.items():
        row = rows.get(item_id)
        if e.op == "delete" and row is None:
            continue
        if (e.op == "put" and row is not None and same_metadata(row.metadata, e.metadata or {})
                and _file_sha(row.image) == e.sha256):
            continue
        out[item_id] = e
    return out


def prepare_fold(layout: IndexLayout, catalog: Catalog) -> Fold:
    """What a build of `layout` (its writer lock held) folds: the published layer plus the
    journal's entries after the published version's folded_seq, up to the last one now."""
    current = layout.current()
    base_seq, layer = 0, {}
    if current is not None:
        try:
            base_seq = Manifest.read(current).live_folded_seq
        except (FileNotFoundError, ValueError):
            base_seq = 0
        layer = read_layer(current)
    fold = Fold(Journal(layout.journal), base_seq, base_seq, {},
                previous_images={e.image for e in layer.values() if e.image})
    if fold.journal.exists():
        con = fold.journal.connect()
        try:
            state = Journal.state(con)
            fold.upto = max(base_seq, state.last_seq)
            entries = Journal.read(con, base_seq, fold.upto)
        finally:
            con.close()
        if state.dropped_upto > base_seq:
            log.warning("warning: the journal dropped changes after seq %d, which the "
                        "published version does not hold", base_seq)
        for e in entries:
            layer[e.id] = LayerEntry(e.id, e.op, e.seq, e.image, e.metadata, e.sha256)
            if e.op == "put":
                fold.journal_puts[e.id] = e.seq
            else:
                fold.journal_puts.pop(e.id, None)
        fold.changes = len(entries)
    fold.layer = _prune(layer, catalog)
    return fold
