"""Which inference precision to run: ``auto`` picks bf16 where the hardware has it natively.

Standard library at import (torch and numpy are imported by the functions that need them),
so that the manifest and the service can name :class:`PrecisionChoice` without torch.

* CPU: bf16 when the CPU executes bf16 natively (AVX-512 BF16 or AMX) and oneDNN may use
  it (``ONEDNN_MAX_CPU_ISA`` not capped below ``AVX512_CORE_BF16``); elsewhere bf16 is
  emulated and runs some 6-7x slower than fp32 (docs/BENCHMARKS.md), so fp32.
* CUDA: bf16 from compute capability 8.0 (Ampere) on, fp16 on 7.x (Volta/Turing tensor
  cores, no bf16), fp32 below.
* Either way the reduced precision is kept only when a start-up check (a few deterministic
  synthetic images, :func:`probe_images`) embeds them with a minimum cosine of at least
  :data:`MIN_COSINE` to fp32; otherwise fp32, with the reason.

An explicit precision (``fp32``, ``bf16``, ``fp16``) is taken as it is, without a check.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

#: what ``precision=`` accepts; ``auto`` resolves to one of the others
PRECISION_NAMES = ("auto", "fp32", "bf16", "fp16")
#: the start-up check's threshold: minimum cosine of a reduced-precision embedding to fp32
MIN_COSINE = 0.999
#: images the start-up check embeds (each for every attribute)
PROBE_IMAGES = 4
#: /proc/cpuinfo flags (and torch's probes) of native bf16 arithmetic on x86
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: ``ONEDNN_MAX_CPU_ISA`` values that still let oneDNN use bf16 instructions
BF16_ISAS = frozenset({
    "ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
})
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision asked for and the one run, with why (``cosine``: the start-up check's
    minimum cosine to fp32, None when no check ran)."""

    requested: str
    chosen: str
    reason: str
    cosine: float | None = None

    def to_dict(self) -> dict[str, str | float | None]:
        return {"requested": self.requested, "chosen": self.chosen, "reason": self.reason,
                "cosine": self.cosine}

    @classmethod
    def from_dict(cls, doc: Mapping[str, object]) -> PrecisionChoice:
        cos = doc.get("cosine")
        return cls(requested=str(doc["requested"]), chosen=str(doc["chosen"]),
                   reason=str(doc.get("reason", "")),
                   cosine=float(cos) if isinstance(cos, (int, float)) else None)


def explicit(precision: str) -> PrecisionChoice:
    """The choice for an explicitly requested precision."""
    return PrecisionChoice(precision, precision, "requested explicitly")


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU runs bf16 natively, and what said so."""

    native: bool
    detail: str


def bf16_support(torch_flags: Iterable[str] | None, cpuinfo_flags: Iterable[str] | None,
                 env: Mapping[str, str]) -> CpuBf16:
    """Decide from torch's CPU probes (None: this torch has none), the kernel's CPU flags
    (None: no /proc/cpuinfo) and the environment (``ONEDNN_MAX_CPU_ISA``)."""
    for var in ISA_CAP_VARIABLES:
        cap = env.get(var, "").strip().upper()
        if cap and cap not in BF16_ISAS:
            return CpuBf16(False, f"{var}={cap} caps oneDNN below AVX512_CORE_BF16")
    for source, flags in (("torch", torch_flags), ("/proc/cpuinfo", cpuinfo_flags)):
        if flags is None:
            continue
        found = [f for f in NATIVE_BF16_FLAGS if f in set(flags)]
        if found:
            return CpuBf16(True, f"{'+'.join(found)} ({source})")
        return CpuBf16(False, f"no {'/'.join(NATIVE_BF16_FLAGS)} ({source})")
    return CpuBf16(False, "CPU features unknown")


def torch_cpu_flags() -> frozenset[str] | None:
    """The native-bf16 features torch's CPU probes report; None when this torch lacks them."""
    import torch

    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    found: set[str] = set()
    for flag, name in probes.items():
        probe = getattr(torch.cpu, name, None)
        if probe is None:
            return None
        if probe():
            found.add(flag)
    return frozenset(found)


def cpuinfo_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The first CPU's ``flags`` line of /proc/cpuinfo; None without one."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def cpu_bf16_support() -> CpuBf16:
    """:func:`bf16_support` of this machine and process environment."""
    return bf16_support(torch_cpu_flags(), cpuinfo_flags(), os.environ)


def cpu_has_native_bf16() -> bool:
    """Whether bf16 runs natively on this CPU (see :func:`cpu_bf16_support`)."""
    return cpu_bf16_support().native


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """The compute capability of a CUDA device."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def candidate(device: torch.device, cpu_probe: Callable[[], CpuBf16] | None = None,
              capability: Callable[[torch.device], tuple[int, int]] | None = None
              ) -> tuple[str | None, str]:
    """The reduced precision worth checking on ``device`` (None: none) and why."""
    if device.type == "cuda":
        major, minor = (capability or cuda_capability)(device)
        cc = f"compute capability {major}.{minor}"
        if major >= 8:
            return "bf16", f"CUDA {cc} has bf16"
        if major >= 7:
            return "fp16", f"CUDA {cc} has fp16 tensor cores, no bf16"
        return None, f"CUDA {cc}: no fast reduced precision"
    if device.type != "cpu":
        return None, f"no reduced precision chosen on {device.type}"
    support = (cpu_probe or cpu_bf16_support)()
    if support.native:
        return "bf16", f"native bf16 on this CPU: {support.detail}"
    return None, f"no native bf16 on this CPU: {support.detail}"


def resolve_precision(requested: str, device: torch.device,
                      cosine_to_fp32: Callable[[str], float], *,
                      cpu_probe: Callable[[], CpuBf16] | None = None,
                      capability: Callable[[torch.device], tuple[int, int]] | None = None,
                      min_cosine: float = MIN_COSINE) -> PrecisionChoice:
    """``requested`` (one of :data:`PRECISION_NAMES`) resolved on ``device``.

    ``cosine_to_fp32(p)``: the start-up check, the minimum cosine of embeddings in precision
    ``p`` to fp32 ones; it runs only for ``auto`` on hardware with a candidate. ``cpu_probe``
    and ``capability`` replace the hardware probes (tests)."""
    if requested not in PRECISION_NAMES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_NAMES)}")
    if requested != "auto":
        return explicit(requested)
    cand, why = candidate(device, cpu_probe, capability)
    if cand is None:
        return PrecisionChoice("auto", "fp32", why)
    cos = float(cosine_to_fp32(cand))
    if not cos >= min_cosine:     # a NaN fails too
        return PrecisionChoice("auto", "fp32", f"{why}, but the start-up check's {cand} "
                               f"cosine to fp32 {cos:.6f} < {min_cosine}", cos)
    return PrecisionChoice("auto", cand, f"{why}; start-up check: {cand} cosine to fp32 "
                           f"{cos:.6f} >= {min_cosine}", cos)


def probe_images(n: int = PROBE_IMAGES, size: tuple[int, int] = (192, 256), seed: int = 0
                 ) -> list[Image.Image]:
    """``n`` deterministic catalog-like RGB images (smooth colour fields, a garment-like
    block, fine stripes) for the start-up check: no files needed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(n):
        base = rng.uniform(40, 220, 3).astype(np.float32)
        slope = rng.uniform(-0.4, 0.4, (2, 3)).astype(np.float32)
        arr = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
        x0, y0 = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
        x1, y1 = x0 + int(rng.integers(w // 3, w // 2)), y0 + int(rng.integers(h // 3, h // 2))
        arr[y0:y1, x0:x1] = rng.uniform(0, 255, 3)
        arr[y0:y1:6, x0:x1] *= 0.6
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"))
    return out
