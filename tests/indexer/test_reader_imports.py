"""Reading an index loads neither torch nor tqdm (the service's reader stays light)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reading_an_index_imports_no_torch_nor_tqdm():
    code = ("import sys, indexer.reader, indexer.published, indexer.items; "
            "heavy = sorted(m for m in ('torch', 'tqdm') if m in sys.modules); "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
