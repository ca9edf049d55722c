"""Process settings of the API server, applied when `service.app` is imported (before torch
loads). They live here, not in the package's `__init__`, so that tools which only import a
helper of the package (`service.startup`, run by the demo and the container) do not pass
them on to the indexer they start.
"""

import os

# OpenMP threads that finish a parallel region spin only briefly (20,000 rounds, tens of
# microseconds) before they sleep. The default (300,000) keeps idle threads on the cores that
# decoding and the event loop need; OMP_WAIT_POLICY=PASSIVE (no spinning at all) made every
# forward pay for waking its threads: one query's forward 32 ms against 16.8 ms on two cores
# (docs/BENCHMARKS.md, "Single-query latency"). An explicit GOMP_SPINCOUNT or
# OMP_WAIT_POLICY in the environment wins. Takes effect only if set before torch loads.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "20000")

# numpy's and FAISS's OpenBLAS run one thread each. The index threads' matrix products (the
# candidates' tag probabilities of a "but with" query, the weighted rescoring) are small, and
# a team of OpenBLAS threads spins on the cores after each one: the next forward of the
# model took 2.5x as long (a 5-attribute upload embedding 164 against 63 ms; docs/BENCHMARKS.md,
# "Single-query latency"). An explicit OPENBLAS_NUM_THREADS wins. Takes effect only if set
# before numpy and faiss load.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Freed activations stay in one heap for the next batch, before any thread allocates
# (model/memory.py).
from model.memory import keep_freed_memory  # noqa: E402

keep_freed_memory()
