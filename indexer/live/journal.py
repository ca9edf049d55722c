"""The live-changes journal beside an index: items put or deleted between two builds.

Beside INDEX_DIR (`IndexLayout.journal`, e.g. `/data/.index.journal/`):

    journal.sqlite          SQLite in WAL mode, synchronous=FULL (every commit is fsync'd)
      entries(seq, op, id, image, metadata, sha256, model, attributes, dim, vectors, created_at)
                            the changes not folded into a published version yet, in order
      folded(...)           the same columns: the changes the last `--update` folded, kept
                            one generation so replicas still serving the previous version
                            stay complete until they reload
      meta(key, value)      format, folded_upto, dropped_upto
    images/<sha256><.ext>   every uploaded image, content-addressed, written (fsync +
                            rename) before the entry that names it commits

`seq` (AUTOINCREMENT: never reused) orders every change of every process writing the
journal; writers serialise on SQLite's write lock (`BEGIN IMMEDIATE`). A `put` entry carries
the item's vectors for every attribute (float32 [A, D], C order) and the checkpoint sha256
that made them; a `delete` entry only the id. For one id the entry with the highest seq wins.
An index version records in its manifest (`live.folded_seq`) the last seq it contains; a
reader applies the entries after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.items import metadata_json
from indexer.layout import IndexLayout
from model.osutil import atomic_write_bytes, fsync_dir

DB = "journal.sqlite"
IMAGES = "images"
FORMAT = "asen-journal/1"
BUSY_TIMEOUT_S = 30.0
OPS = ("put", "delete")

_COLUMNS = ("seq", "op", "id", "image", "metadata", "sha256", "model", "attributes", "dim",
            "vectors", "created_at")
_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    seq INTEGER PRIMARY KEY {auto},
    op TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    id TEXT NOT NULL,
    image TEXT,
    metadata TEXT,
    sha256 TEXT,
    model TEXT,
    attributes TEXT,
    dim INTEGER,
    vectors BLOB,
    created_at TEXT NOT NULL
)"""
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
             "TIFF": ".tif", "MPO": ".jpg"}


class JournalError(RuntimeError):
    """The journal cannot be read or written (read-only folder, disk full, locked too long)."""


class LiveChangesUnavailable(JournalError):
    """The index takes no live changes: it was opened without a journal."""


@dataclass(frozen=True)
class Entry:
    """One change. `image` is a file name under `images/`; `vectors` [A, D] float32."""

    seq: int
    op: str
    id: str
    image: str | None = None
    metadata: dict[str, object] | None = None
    sha256: str | None = None
    model: str | None = None
    attributes: tuple[str, ...] = ()
    vectors: np.ndarray | None = None
    created_at: str = ""


@dataclass(frozen=True)
class JournalState:
    """Where the journal stands: the last seq written and what was folded or dropped."""

    last_seq: int
    folded_upto: int     # entries <= this were folded into a published version
    dropped_upto: int    # entries <= this are gone (not even in `folded`)


def _entry(row: tuple[Any, ...]) -> Entry:
    seq, op, item_id, image, meta, sha, model, attrs, dim, blob, created = row
    names = tuple(json.loads(attrs)) if attrs else ()
    vectors = None
    if blob is not None and dim:
        vectors = np.frombuffer(blob, dtype=np.float32).reshape(len(names), int(dim))
    return Entry(int(seq), str(op), str(item_id), image, json.loads(meta) if meta else None,
                 sha, model, names, vectors, created)


def image_suffix(data: bytes) -> str:
    """A file suffix from the image's own format ('.img' when unknown)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return _SUFFIXES.get(img.format or "", ".img")
    except Exception:  # noqa: BLE001 - any decoder failure: a neutral suffix
        return ".img"


class Journal:
    """The journal folder of one INDEX_DIR. Connections are plain `sqlite3` connections in
    autocommit mode; group writes with :meth:`transaction`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.db = self.folder / DB
        self.images = self.folder / IMAGES

    @classmethod
    def of(cls, index_folder: str | os.PathLike) -> Journal:
        """The journal of INDEX_DIR or of one of its version folders."""
        return cls(IndexLayout.of(index_folder).journal)

    def exists(self) -> bool:
        return self.db.is_file()

    # -- connections -------------------------------------------------------------------------
    def connect(self, create: bool = False) -> sqlite3.Connection:
        """A connection (FileNotFoundError when absent and not `create`; JournalError when
        it cannot be opened)."""
        if not create and not self.exists():
            raise FileNotFoundError(f"no journal at {self.db}")
        try:
            if create:
                self.images.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.db, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                  check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            if create:
                with self.transaction(con):
                    con.execute(_TABLE.format(name="entries", auto="AUTOINCREMENT"))
                    con.execute(_TABLE.format(name="folded", auto=""))
                    con.execute("CREATE TABLE IF NOT EXISTS meta "
                                "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    con.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
                fsync_dir(self.folder)
            return con
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal {self.db}: {exc}") from exc

    @staticmethod
    @contextlib.contextmanager
    def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """A write transaction: SQLite's write lock is taken at once (other writers wait up
        to BUSY_TIMEOUT_S), committed (fsync'd) at the end, rolled back on any error."""
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # -- reading -----------------------------------------------------------------------------
    @staticmethod
    def state(con: sqlite3.Connection) -> JournalState:
        row = con.execute(
            "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'entries'), "
            "(SELECT value FROM meta WHERE key = 'folded_upto'), "
            "(SELECT value FROM meta WHERE key = 'dropped_upto')").fetchone()
        return JournalState(*(int(v or 0) for v in row))

    @staticmethod
    def read(con: sqlite3.Connection, after: int, upto: int | None = None) -> list[Entry]:
        """Entries with after < seq (<= upto), from both tables, in seq order."""
        cols = ", ".join(_COLUMNS)
        bound = "" if upto is None else f" AND seq <= {int(upto)}"
        rows = con.execute(
            f"SELECT {cols} FROM folded WHERE seq > ?{bound} UNION ALL "
            f"SELECT {cols} FROM entries WHERE seq > ?{bound} ORDER BY seq",
            (int(after), int(after))).fetchall()
        return [_entry(r) for r in rows]

    @staticmethod
    def pending(con: sqlite3.Connection, after: int = 0) -> int:
        """Entries not folded yet (seq > `after`, the served version's folded_seq)."""
        return int(con.execute("SELECT COUNT(*) FROM entries WHERE seq > ?",
                               (int(after),)).fetchone()[0])

    # -- writing (inside a transaction) --------------------------------------------------------
    def store_image(self, data: bytes) -> tuple[str, str]:
        """Write the image once under its content hash; returns (file name, sha256)."""
        sha = hashlib.sha256(data).hexdigest()
        name = sha + image_suffix(data)
        path = self.images / name
        if not path.is_file():
            atomic_write_bytes(path, data)
        return name, sha

    @staticmethod
    def append_put(con: sqlite3.Connection, item_id: str, image: str, sha256: str,
                   metadata: Mapping[str, object], model: str | None, attributes: list[str],
                   vectors: np.ndarray) -> int:
        """Record a put; returns its seq."""
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(attributes):
            raise ValueError(f"vectors must be [{len(attributes)}, D], got {list(vecs.shape)}")
        cur = con.execute(
            "INSERT INTO entries (op, id, image, metadata, sha256, model, attributes, dim, "
            "vectors, created_at) VALUES ('put', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (item_id, image, metadata_json(metadata), sha256,
             model, json.dumps(list(attributes)), int(vecs.shape[1]), vecs.tobytes(), _now()))
        return _seq(cur)

    @staticmethod
    def append_delete(con: sqlite3.Connection, item_id: str) -> int:
        cur = con.execute("INSERT INTO entries (op, id, created_at) VALUES ('delete', ?, ?)",
                          (item_id, _now()))
        return _seq(cur)

    @staticmethod
    def reappend(con: sqlite3.Connection, seq: int) -> int:
        """Copy entry `seq` as a new, pending entry (a change the fold could not fold)."""
        cols = ", ".join(c for c in _COLUMNS if c != "seq")
        cur = con.execute(f"INSERT INTO entries ({cols}) SELECT {cols} FROM entries "
                          "WHERE seq = ?", (int(seq),))
        return _seq(cur)

    @staticmethod
    def fold(con: sqlite3.Connection, upto: int, keep_after: int) -> None:
        """Move entries <= `upto` (now in a published version) to `folded` and drop the
        folded entries <= `keep_after` (those of the version before)."""
        cols = ", ".join(_COLUMNS)
        con.execute(f"INSERT OR REPLACE INTO folded ({cols}) SELECT {cols} FROM entries "
                    "WHERE seq <= ?", (int(upto),))
        con.execute("DELETE FROM entries WHERE seq <= ?", (int(upto),))
        con.execute("DELETE FROM folded WHERE seq <= ?", (int(keep_after),))
        for key, value in (("folded_upto", upto), ("dropped_upto", keep_after)):
            con.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                        "value = MAX(CAST(value AS INTEGER), excluded.value)", (key, int(value)))

    def collect_images(self, con: sqlite3.Connection, keep: set[str]) -> int:
        """Delete image files no entry and no name in `keep` refers to (call it inside a
        transaction, so no put is between writing its image and committing); returns the
        number deleted."""
        used = {n for (n,) in con.execute(
            "SELECT image FROM entries WHERE image IS NOT NULL UNION "
            "SELECT image FROM folded WHERE image IS NOT NULL")} | keep
        removed = 0
        if self.images.is_dir():
            for path in self.images.iterdir():
                if path.is_file() and path.name not in used:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


def _seq(cur: sqlite3.Cursor) -> int:
    """The seq an INSERT gave its entry."""
    if cur.lastrowid is None:
        raise JournalError("the journal returned no seq for a new entry")
    return int(cur.lastrowid)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
