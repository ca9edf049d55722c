"""The local embedding engine (indexer/embed/local_engine.py): its steady rate, and decode
workers sized from the usable CPUs."""

from __future__ import annotations

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
