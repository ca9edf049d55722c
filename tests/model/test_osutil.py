"""Usable CPUs (model/osutil.py): the cgroup v1 and v2 CPU limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import osutil


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
