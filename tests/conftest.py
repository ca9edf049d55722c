"""Fixtures shared by every test package: the tiny synthetic index, built once per run.

Each package's conftest.py adds its own (tests/indexer: a small dataset and checkpoint to
index; tests/service: the live servers). Helpers live in tests/testkit/.
"""

from __future__ import annotations

import os

import pytest
from testkit import TinyIndex, tiny_index

# The service's default precision, auto, picks bf16 on a CPU with native bf16 and fp32 on
# others: the tests compare embeddings and scores across processes and with fp32 ones, so
# their servers run fp32 on every kind of host (tests/model/test_precision.py and
# tests/service/test_precision.py test auto; ASEN_PRECISION=auto in the environment runs
# the whole suite with it). The indexer runs are pinned by testkit's PRECISION flags.
os.environ.setdefault("ASEN_PRECISION", "fp32")


@pytest.fixture(scope="session")
def fx(tmp_path_factory: pytest.TempPathFactory) -> TinyIndex:
    """The tiny synthetic catalog (40 train, 2 valid, 8 test items of 128 px), a random tiny
    checkpoint and the index the indexer CLI built from them. Read-only: a test that
    changes an index builds or copies its own."""
    return tiny_index(tmp_path_factory.mktemp("tiny-index"))
