"""`build --max-memory SIZE`: the index type and parameters that fit a memory budget.

Modelled on autofaiss's selection: keep exact vectors in memory while they fit (flat);
otherwise product-quantize. The compressed choice is `ivfpq_refine`: an (OPQ-rotated) IVF
over PQ codes, 4-bit fast-scan where it fits, with the largest code that fits the budget,
plus float16 copies of the vectors memory-mapped from disk for an exact re-rank. The budget
counts resident memory per attribute (each type's `memory_bytes` formula); the memory-mapped
float16 vectors are disk (paged in only for the re-ranked candidates).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from indexer.build.index_types import TYPES, IndexSpec

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# code sizes tried, largest first: bytes per vector of the PQ codes
_CODE_BYTES = (512, 384, 256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 4)


def parse_size(text: str) -> int:
    """'512M', '4G', '1.5GiB', '100000' -> bytes (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 512M, 4G)")
    value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f}{unit}"
    return f"{n}B"


@dataclass
class Choice:
    """The selected spec, its memory estimate and why."""

    spec: IndexSpec
    memory_bytes: int
    disk_bytes: int
    reason: str

    def selection(self, budget: int) -> dict[str, Any]:
        """The manifest's record of the choice."""
        return {"max_memory": budget, "memory_bytes": self.memory_bytes,
                "disk_bytes": self.disk_bytes, "reason": self.reason}


class BudgetError(ValueError):
    """Nothing fits the memory budget."""


def select(n: int, dim: int, budget: int, overrides: dict[str, Any] | None = None) -> Choice:
    """The most exact index for `n` vectors of `dim` whose resident memory fits `budget`."""
    overrides = dict(overrides or {})
    flat = TYPES["flat"]
    need = flat.memory_bytes(n, dim, {})
    if need <= budget:
        return Choice(IndexSpec("flat", {}), need, 0,
                      f"exact vectors fit: {format_size(need)} <= {format_size(budget)}")
    kind = TYPES["ivfpq_refine"]
    tried = []
    bits = (4, 8) if "nbits" not in overrides else (int(overrides["nbits"]),)
    # the largest code that fits, 4-bit fast-scan before 8-bit at equal size; m <= dim / 2
    for code, nbits in ((c, b) for c in _CODE_BYTES for b in bits):
        m = int(overrides["m"]) if "m" in overrides else code * 8 // nbits
        if m > dim // 2 or dim % m or m * nbits // 8 != code:
            continue
        params = kind.params(n, dim, {**overrides, "m": m, "nbits": nbits})
        mem = kind.memory_bytes(n, dim, params)
        tried.append(mem)
        if mem <= budget:
            return Choice(IndexSpec(kind.name, params), mem, kind.disk_bytes(n, dim, params),
                          f"flat needs {format_size(need)} > {format_size(budget)}; "
                          f"{m}x{nbits}-bit PQ codes ({code} B/vector) fit in "
                          f"{format_size(mem)}, float16 vectors memory-mapped for re-ranking")
    least = min(tried) if tried else need
    raise BudgetError(f"no index of {n} vectors x {dim} fits --max-memory {format_size(budget)}"
                      f" (the smallest needs {format_size(least)})")
