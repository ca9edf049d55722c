"""scripts/gpu_check.py: it refuses to run without a CUDA GPU, before any work."""

from __future__ import annotations

import os
import subprocess
import sys

from testkit import REPO_ROOT


def test_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gpu_check.py"),
                          "--out", str(out), "--workdir", str(tmp_path / "work")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 2, res.stderr
    assert "no CUDA GPU" in res.stderr
    assert not (tmp_path / "work").exists()
