"""Where an index lives on disk and how a new version replaces the old one atomically.

For `--out /data/idx`:

    /data/idx                     symlink -> .idx.versions/<version>   (what readers open)
    /data/.idx.versions/<version>/  complete, immutable index versions (current + previous)
    /data/.idx.versions/.staging-<version>/  a version being written
    /data/.idx.work/<job-key>/    the embeddings store of a running (or killed) job
    /data/.idx.lock               held by the one job allowed to write /data/idx
    /data/.idx.journal/           live catalog changes between builds (indexer/live/journal.py)

A new version is written in a staging folder, renamed into place, and published by
`os.replace` of a fresh symlink over `/data/idx`, which is atomic on POSIX: a reader sees
the old version or the new one, never a mix; a crash at any point leaves the old one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from model.osutil import fsync_dir

log = logging.getLogger(__name__)


class IndexLockedError(RuntimeError):
    """Another job is writing the same index."""


def new_version() -> str:
    """A short, unique, time-sortable version id."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


class WriterLock:
    """An exclusive, non-blocking `flock` on `lockfile`: one writer of `what` at a time."""

    def __init__(self, lockfile: Path, what: str) -> None:
        self.lockfile, self.what = Path(lockfile), what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise IndexLockedError."""
        self.lockfile.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IndexLockedError(f"another indexer job is writing {self.what}") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class IndexLayout:
    """Paths of one INDEX_DIR and its siblings."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        out = Path(os.path.abspath(out))
        self.out = out
        self.parent = out.parent
        self.versions = out.parent / f".{out.name}.versions"
        self.work = out.parent / f".{out.name}.work"
        self.lockfile = out.parent / f".{out.name}.lock"
        self.journal = out.parent / f".{out.name}.journal"
        self._lock = WriterLock(self.lockfile, str(self.out))

    @classmethod
    def of(cls, folder: str | os.PathLike[str]) -> IndexLayout:
        """The layout a folder belongs to: INDEX_DIR itself (the symlink or a plain folder)
        or one of its versions, `.NAME.versions/<version>` (what readers open)."""
        path = Path(os.path.abspath(folder))
        match = re.fullmatch(r"\.(.+)\.versions", path.parent.name)
        if match and not path.is_symlink():
            return cls(path.parent.parent / match.group(1))
        return cls(path)

    # -- locking ---------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the writer lock or raise IndexLockedError."""
        self._lock.acquire()

    def unlock(self) -> None:
        self._lock.release()

    def __enter__(self) -> IndexLayout:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    # -- versions --------------------------------------------------------------------------
    def current(self) -> Path | None:
        """The folder the index currently resolves to, or None when there is no index."""
        if not self.out.exists():
            return None
        return Path(os.path.realpath(self.out))

    def staging(self, version: str) -> Path:
        """A fresh, empty staging folder for `version` (stale ones are removed)."""
        self.versions.mkdir(parents=True, exist_ok=True)
        for old in self.versions.glob(".staging-*"):
            shutil.rmtree(old, ignore_errors=True)
        path = self.versions / f".staging-{version}"
        path.mkdir()
        return path

    def publish(self, staging: Path, version: str) -> Path:
        """Move a complete staging folder into place and swap the symlink atomically.

        The new version and the one it replaces are kept; older versions are deleted.
        """
        final = self.versions / version
        os.replace(staging, final)
        fsync_dir(self.versions)
        previous = self.current()
        if self.out.exists() and not self.out.is_symlink():
            previous = (self.versions / f"legacy-{new_version()}").resolve()
            log.warning("note: %s is a plain folder; moving it to %s (later swaps are atomic)",
                        self.out, previous)
            os.replace(self.out, previous)
        tmp_link = self.parent / f".{self.out.name}.link-{version}"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(os.path.relpath(final, self.parent), tmp_link)
        os.replace(tmp_link, self.out)
        fsync_dir(self.parent)
        self.prune({final.resolve()} | ({previous} if previous else set()))
        return final

    def prune(self, keep: set[Path]) -> None:
        """Delete every complete version folder not in `keep` (the current one always stays)."""
        current = self.current()
        keep = set(keep) | ({current} if current else set())
        for path in self.versions.iterdir():
            if path.is_dir() and not path.name.startswith(".") and path.resolve() not in keep:
                shutil.rmtree(path, ignore_errors=True)
