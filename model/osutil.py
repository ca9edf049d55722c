"""Files and the machine, standard library only: hashing a file, writing a file atomically,
counting the CPUs this process may use. The one helper for each, used by every package."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

CGROUP_ROOT = "/sys/fs/cgroup"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in the folder `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Have `write(tmp)` write a temporary sibling of `path`, fsync it, rename it over `path`
    and fsync the folder: readers see the old file or the whole new one, even after a crash.

    For writers that take a path (torch.save, pyarrow, faiss); see `atomic_open` for streams.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: object) -> Iterator[IO]:
    """`open()` for writing whose file replaces `path` atomically when the block ends
    without an error (see `replace_atomically`); on an error `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **kwargs) as f:  # type: ignore[call-overload]
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically and durably."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def cgroup_cpu_limit(root: str | os.PathLike = CGROUP_ROOT,
                     proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 2.0), or None when unlimited.

    cgroup v2: ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"); v1: ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` (quota -1 = none). Looks at the process's own cgroup and its
    ancestors up to ``root`` (inside a container, ``root`` itself); the smallest limit wins.
    """
    root = Path(root)
    limits = [q for d in _cgroup_dirs(root, _own_cgroups(proc_cgroup))
              if (q := _read_quota(d)) is not None]
    return min(limits) if limits else None


def _own_cgroups(proc_cgroup: str | os.PathLike) -> dict[str, str]:
    """Controller list -> cgroup path of this process ("" is the v2 unified hierarchy)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def _cgroup_dirs(root: Path, own: dict[str, str]) -> list[Path]:
    """Folders that may hold this process's CPU limit: v2 at `root`, v1 under cpu/."""
    dirs = []
    for mount, key in ((root, ""), (root / "cpu", "cpu"), (root / "cpu,cpuacct", "cpu")):
        own_path = next((p for k, p in own.items() if k == key or key in k.split(",")), "/")
        path = mount / own_path.strip("/")
        while True:          # the own cgroup and its ancestors, down to the mount point
            dirs.append(path)
            if path == mount:
                break
            path = path.parent
    return dirs


def _read_quota(folder: Path) -> float | None:
    try:
        if (folder / "cpu.max").is_file():
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100_000)
        if (folder / "cpu.cfs_quota_us").is_file():
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup CPU quota.

    ``os.cpu_count()`` counts the host's cores, so a container limited to 2 CPUs on an
    8-core host would start 7 decode workers (and ~4x the batches in /dev/shm).
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):       # not offered on every platform
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)



