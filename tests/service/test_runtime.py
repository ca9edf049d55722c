"""The server's process settings (service/runtime.py), applied when `service.app` is imported:
a fresh interpreter each, since they only act before numpy, faiss and torch load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from testkit import REPO_ROOT

NAMES = ("OPENBLAS_NUM_THREADS", "GOMP_SPINCOUNT")


def _settings_after_import(**env: str) -> dict[str, str | None]:
    clean = {k: v for k, v in os.environ.items() if k not in (*NAMES, "OMP_WAIT_POLICY")}
    code = ("import os, sys, json; import service.app; "
            f"print(json.dumps({{n: os.environ.get(n) for n in {list(NAMES)!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("env", "want"), [
    ({}, {"OPENBLAS_NUM_THREADS": "1", "GOMP_SPINCOUNT": "20000"}),
    ({"OPENBLAS_NUM_THREADS": "2", "GOMP_SPINCOUNT": "5"},
     {"OPENBLAS_NUM_THREADS": "2", "GOMP_SPINCOUNT": "5"}),   # explicit settings win
])
def test_blas_and_openmp_threads_of_the_server(env, want):
    assert _settings_after_import(**env) == want


def test_no_blas_is_loaded_before_the_settings():
    """What service.app imports before service.runtime (fastapi, the package) loads neither
    numpy, faiss nor torch, so the variables act."""
    code = ("import sys; import fastapi, fastapi.middleware.cors, fastapi.responses, "
            "fastapi.staticfiles, service; "
            "print(sorted(m for m in ('numpy', 'faiss', 'torch') if m in sys.modules))")
    clean = {k: v for k, v in os.environ.items() if k not in NAMES}
    out = subprocess.run([sys.executable, "-c", code], env=clean, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
