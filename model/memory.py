"""Keep freed heap memory in the process for the next forward pass (glibc malloc).

By default glibc serves large blocks (a batch's activations: tens of MB at the stride-8
trunk) with fresh ``mmap`` calls and hands freed memory back to the kernel, so every
forward and backward pass faults its activations in again, page by page. On the 2-core
machines this doubled a training step (255 against 148 ms, most of it system time) and
made a service batch of 8 slower per image than single images (docs/BENCHMARKS.md).
Raising the mmap and trim thresholds keeps the memory in the heap for reuse; the process
then holds its peak heap size instead of shrinking between passes. One arena for every
thread: a worker thread's arena (the service's inference thread) is a string of 64 MiB
mappings that glibc trims page by page, so a batch there kept faulting its memory in
(bench/alloc.py: system time 14 against 0.4 ms an image for a batch of 8). Call it before
the process starts threads that allocate.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_LARGE = 1 << 30            # 1 GiB: larger blocks still come from mmap
_GLIBC_MMAP_CAP = 1 << 25   # the cap older glibc versions accept (half its 64 MiB heap)

_applied: bool | None = None


def one_arena_env() -> dict[str, str]:
    """Environment that gives a new process one malloc arena from its first allocation.

    `keep_freed_memory` cannot move threads that already run onto the main arena. A Ray
    worker starts its threads before any of our code, and runs a model actor's calls on one
    of them; this environment, set when the process starts, covers those threads too.
    """
    return {"MALLOC_ARENA_MAX": "1"}


def keep_freed_memory() -> bool:
    """Tune malloc once per process; returns whether it applied (False off glibc)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (musl and others lack it: leave them alone)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, _LARGE) == 1 or mallopt(
        _M_MMAP_THRESHOLD, _GLIBC_MMAP_CAP) == 1
    trim_ok = mallopt(_M_TRIM_THRESHOLD, _LARGE) == 1
    arena_ok = mallopt(_M_ARENA_MAX, 1) == 1
    _applied = mmap_ok and trim_ok and arena_ok
    return _applied
