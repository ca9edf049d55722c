"""Process settings of the API server, applied when `service.app` is imported (before torch
loads). They live here, not in the package's `__init__`, so that tools which only import a
helper of the package (`service.startup`, run by the demo and the container) do not pass
them on to the indexer they start.
"""

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
