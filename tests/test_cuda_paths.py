"""CUDA paths, pinned on the CPU (issue 12): device-correct RoI boxes, one host copy of the
boxes per pass, the GPU clustering index alive through IVF training, decode workers sized
from the usable CPUs, a device-aware job key, IEEE fp32 on CUDA, and scripts/gpu_check.py
bailing out without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from PIL import Image
from torch._subclasses.fake_tensor import FakeTensorMode

from indexer.build import faiss_index as fx
from indexer.embed import local_engine as ej
from model import build_model, osutil
from model.embedder import Embedder, use_ieee_fp32
from model.roi import attention_boxes

REPO = Path(__file__).resolve().parents[1]


# -- 1. RoI boxes on the input's device ----------------------------------------------------

def test_attention_boxes_stay_on_a_cuda_device():
    """Fake CUDA tensors check device propagation like CUDA does (CPU constants that are not
    0-dimensional cannot be written into them), without a GPU."""
    with FakeTensorMode():
        attn = torch.rand(3, 14, 14, device="cuda")
        boxes = attention_boxes(attn, 224, 0.1)
        assert boxes.device.type == "cuda" and tuple(boxes.shape) == (3, 4)


def test_empty_foreground_still_gives_the_whole_frame():
    attn = torch.full((2, 14, 14), 1 / 196)
    attn[1, 3, 3] = 1.0
    boxes = attention_boxes(attn, 224, 0.1)
    assert boxes[0].tolist() == [0, 0, 224, 224]
    assert boxes[1].tolist() != [0, 0, 224, 224]


# -- 3. the boxes cross to the host once per pass -----------------------------------------

def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)) for _ in range(n)]


def test_local_crops_copy_boxes_to_the_host_once(monkeypatch):
    """Device-to-host reads (``tolist``) per pass do not grow with the rows of the pass."""
    torch.manual_seed(0)
    attrs = [(f"a{i}", 2) for i in range(6)]
    emb = Embedder(build_model("tiny", attrs), device="cpu", batch_size=64)
    prepared = emb.prepare(_images(3))
    calls = []
    original = torch.Tensor.tolist

    def counting(self):
        calls.append(self.shape)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    emb.embed_all_prepared(prepared, [0])             # 3 rows
    few = len(calls)
    calls.clear()
    emb.embed_all_prepared(prepared)                  # 18 rows, still one pass
    assert len(calls) == few <= 2


# -- 2. IVF training with a GPU clustering index -------------------------------------------

def _vectors(n: int = 2000, d: int = 32) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


IVF_PARAMS = {"nlist": 8, "m": 4, "nbits": 4, "nprobe": 8}


def test_clustering_index_outlives_ivf_training(monkeypatch):
    """A CPU flat index stands in for the GPU copy; the IVF keeps only a raw pointer to it,
    so the Python object must stay alive until training is over (the old code freed it at
    once and trained through a dangling pointer)."""
    vecs = _vectors()
    made: list[weakref.ref] = []
    during: list[tuple[bool, int]] = []

    def fake_to_all_gpus(index, *args, **kwargs):
        stand_in = faiss.IndexFlatL2(index.d)
        made.append(weakref.ref(stand_in))
        return stand_in

    original = faiss.IndexIVFPQ.train

    def recording_train(self, x):
        alive = bool(made) and made[-1]() is not None
        if not alive:  # stop before FAISS calls through the dangling pointer
            during.append((False, 0))
            raise RuntimeError("clustering index freed before training")
        original(self, x)
        during.append((True, made[-1]().ntotal))   # the k-means ran on the stand-in

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_to_all_gpus)
    monkeypatch.setattr(faiss.IndexIVFPQ, "train", recording_train)
    spec = fx.resolve_spec("ivfpq", len(vecs), vecs.shape[1], IVF_PARAMS)
    index = fx.build(spec, vecs.shape[1], np.arange(len(vecs)), vecs.__getitem__,
                     use_gpu=True)
    assert during == [(True, IVF_PARAMS["nlist"])]
    assert faiss.extract_index_ivf(index).clustering_index is None   # no pointer left behind
    assert made[-1]() is None                                        # and released after
    assert index.is_trained and index.ntotal == len(vecs)


def test_gpu_failure_during_training_falls_back_to_the_cpu():
    vecs = _vectors()
    spec = fx.resolve_spec("ivfpq", len(vecs), vecs.shape[1], IVF_PARAMS)
    index = fx.new_index(spec, vecs.shape[1])
    # a clustering index of the wrong dimension makes the k-means itself throw
    where = fx.train_ivf(index, vecs, lambda flat: faiss.IndexFlatL2(flat.d + 1))
    assert where == "cpu" and index.is_trained
    assert faiss.extract_index_ivf(index).clustering_index is None


def test_gpu_copy_failure_falls_back_to_the_cpu():
    vecs = _vectors()
    spec = fx.resolve_spec("ivfpq", len(vecs), vecs.shape[1], IVF_PARAMS)
    index = fx.new_index(spec, vecs.shape[1])

    def no_gpu(flat):
        raise RuntimeError("no GPU")

    assert fx.train_ivf(index, vecs, no_gpu) == "cpu" and index.is_trained
    held = []

    def to_gpu(flat):
        held.append(faiss.IndexFlatL2(flat.d))
        return held[-1]

    other = fx.new_index(spec, vecs.shape[1])
    assert fx.train_ivf(other, vecs, to_gpu) == "gpu" and other.is_trained


# -- 5. decode workers from the usable CPUs ------------------------------------------------

def _cgroup(tmp_path: Path, files: dict[str, str], own: str = "0::/\n") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(own)
    return root, proc


@pytest.mark.parametrize("files,own,want", [
    ({"cpu.max": "200000 100000\n"}, "0::/\n", 2.0),                     # v2, in a container
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),                       # v2, no limit
    ({"cpu.max": "150000 100000\n"}, "0::/\n", 1.5),
    ({"cpu.max": "max 100000\n", "a/cpu.max": "400000 100000\n",         # v2 host: ancestors
      "a/b/cpu.max": "max 100000\n"}, "0::/a/b\n", 4.0),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/\n", 3.0),                                          # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/\n", None),                                         # v1, no limit
    ({}, "0::/\n", None),                                                # no cgroup files
])
def test_cgroup_cpu_limit(tmp_path, files, own, want):
    root, proc = _cgroup(tmp_path, files, own)
    assert osutil.cgroup_cpu_limit(root, proc) == want


def test_default_workers_follow_the_container_limit(monkeypatch):
    """8-core host, 2-CPU container limit: one decode worker, not seven."""
    monkeypatch.setattr(osutil.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(osutil.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(osutil, "cgroup_cpu_limit", lambda *a, **k: 2.0)
    assert osutil.available_cpus() == 2 and ej.default_workers() == 1
    monkeypatch.setattr(osutil, "cgroup_cpu_limit", lambda *a, **k: 2.5)
    assert osutil.available_cpus() == 3
    monkeypatch.setattr(osutil, "cgroup_cpu_limit", lambda *a, **k: None)
    monkeypatch.setattr(osutil.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert osutil.available_cpus() == 3 and ej.default_workers() == 2


# -- 6. device in the job key, IEEE fp32 on CUDA -------------------------------------------

def test_job_key_depends_on_the_device():
    from indexer.embed.stage import job_key

    args = ("sha", "fp32", ["a", "b"])
    assert job_key(*args, "cpu") != job_key(*args, "cuda")
    assert job_key(*args, "cpu") == job_key(*args, "cpu")


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_fp32_on_cuda_turns_tf32_off(tf32_flags):
    assert not use_ieee_fp32(torch.device("cpu"), "fp32")
    assert not use_ieee_fp32(torch.device("cuda"), "bf16")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert use_ieee_fp32(torch.device("cuda"), "fp32")
    assert not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32


# -- the device check script ---------------------------------------------------------------

def test_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"),
                          "--out", str(out), "--workdir", str(tmp_path / "work")],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 2, res.stderr
    assert "no CUDA GPU" in res.stderr
    assert not (tmp_path / "work").exists()
