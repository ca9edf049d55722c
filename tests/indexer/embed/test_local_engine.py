"""The local embedding engine (indexer/embed/local_engine.py): its steady rate, and decode
workers sized from the usable CPUs."""

from __future__ import annotations

import os
import threading

import pytest

from indexer.embed import local_engine as ej
from indexer.embed.local_engine import EmbedOutcome
from model import osutil


def test_steady_rate_leaves_out_the_start_up():
    out = EmbedOutcome(shas=[None] * 10, status=["computed"] * 10, seconds=6.0)
    assert out.steady_images_per_s() is None              # no vectors came back
    out.first_vectors_seconds, out.items_by_first_vectors = 2.0, 4
    assert out.steady_images_per_s() == pytest.approx(6 / 4)
    out.items_by_first_vectors = 10                       # one batch: nothing after it
    assert out.steady_images_per_s() is None


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


# ---------------------------------------------------------------- catalog entries that are no file


def _loader(max_bytes: int = 1024) -> ej.ItemLoader:
    return ej.ItemLoader(preprocess=lambda img: img, limits=ej.EmbedLimits(max_bytes=max_bytes),
                         previous={}, stored={}, stored_shas={})


def _load_within(loader: ej.ItemLoader, path: str, seconds: float = 10.0) -> ej.Loaded:
    """``loader.load`` on a daemon thread: a hang fails the test instead of the run."""
    done: list[ej.Loaded] = []
    thread = threading.Thread(target=lambda: done.append(loader.load(0, "x", path)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"loading {path} did not finish in {seconds} s"
    return done[0]


def test_a_fifo_in_the_catalog_is_rejected_at_once(tmp_path):
    fifo = tmp_path / "a.jpg"
    os.mkfifo(fifo)
    got = _load_within(_loader(), str(fifo))
    assert (got.status, got.reason) == ("rejected", "not_a_file")
    assert "FIFO" in got.detail


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_in_the_catalog_is_rejected_without_reading_it(tmp_path):
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")          # a symlink in the catalog folder to a device
    got = _load_within(_loader(), str(link))
    assert (got.status, got.reason) == ("rejected", "not_a_file")
    assert "character device" in got.detail


def test_a_directory_in_the_catalog_is_rejected(tmp_path):
    (tmp_path / "d.jpg").mkdir()
    got = _loader().load(0, "x", str(tmp_path / "d.jpg"))
    assert (got.status, got.reason) == ("rejected", "not_a_file")


def test_a_file_over_the_byte_limit_is_too_large(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2048)
    got = _loader(max_bytes=1024).load(0, "x", str(big))
    assert (got.status, got.reason) == ("rejected", "too_large")
    assert _loader().load(0, "x", str(tmp_path / "nope.jpg")).reason == "missing"
