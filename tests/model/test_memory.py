"""The heap tuning keeps a forward pass's freed activations for the next one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from testkit import REPO_ROOT

# glibc's own account (mallinfo2): bytes in mmap'd blocks while a 100 MB tensor (a batch's
# activations) is held, and bytes the heap keeps after it is freed
PROBE = textwrap.dedent("""
    import ctypes, json, sys
    import torch
    sys.path.insert(0, {repo!r})
    from model.memory import keep_freed_memory
    if sys.argv[1] == "tuned":
        assert keep_freed_memory() is True and keep_freed_memory() is True
    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    def one_pass():
        x = torch.ones(25_000_000)
        held = libc.mallinfo2()
        del x
        return held, libc.mallinfo2()
    if sys.argv[2] == "thread":   # as the service's inference thread runs a batch
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1) as pool:
            held, freed = pool.submit(one_pass).result()
    else:
        held, freed = one_pass()
    print(json.dumps({{"mmapped_while_held": held.hblkhd, "heap_after_free": freed.arena}}))
""")


def probe(mode: str, where: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(repo=str(REPO_ROOT)), mode, where],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_large_blocks_come_from_the_heap_and_stay_there(where):
    default, tuned = probe("default", where), probe("tuned", where)
    # glibc's default: the block is mapped for the tensor and unmapped when it goes, so the
    # next pass faults its pages in again
    assert default["mmapped_while_held"] >= 100_000_000, default
    # tuned: the heap serves it and keeps it for the next pass
    assert tuned["mmapped_while_held"] < 100_000_000, tuned
    assert tuned["heap_after_free"] >= 100_000_000, tuned
