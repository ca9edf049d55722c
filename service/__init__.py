"""The search API: image + attribute in, nearest catalog items out (`python -m service`)."""

import os

# Idle OpenMP threads sleep instead of spinning. The service shares its cores between the
# model's intra-op threads, the event loop and image decoding, and with spinning workers a
# busy host turned ~3 ms forwards into ~200 ms ones (docs/BENCHMARKS.md). Takes effect only if
# set before torch loads; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Freed activations stay in one heap for the next batch, before any thread allocates
# (model/memory.py).
from model.memory import keep_freed_memory  # noqa: E402

keep_freed_memory()

from model.version import __version__  # noqa: E402

__all__ = ["__version__"]
