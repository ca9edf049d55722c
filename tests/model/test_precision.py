"""Precision ``auto`` (model/precision.py): the CPU probe, the decision on CPU and CUDA, the
start-up check, and an explicit precision winning. The CPU's flags are the one thing
substituted (they are the machine's), so both kinds of host are tested on either."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import model.precision as mp
from model import build_model
from model.embedder import Embedder
from model.precision import CpuBf16, PrecisionChoice, bf16_support, resolve_precision

CPU = torch.device("cpu")
NATIVE = CpuBf16(True, "avx512_bf16 (test)")
EMULATED = CpuBf16(False, "no avx512_bf16/amx_bf16 (test)")
AVX2_HOST = {"sse4_2", "avx", "avx2", "fma"}
SPR_HOST = AVX2_HOST | {"avx512f", "avx512bw", "avx512_bf16", "amx_tile", "amx_bf16"}


@pytest.mark.parametrize("torch_flags, cpuinfo, env, native, says", [
    (None, SPR_HOST, {}, True, "avx512_bf16+amx_bf16 (/proc/cpuinfo)"),
    (None, AVX2_HOST | {"amx_bf16"}, {}, True, "amx_bf16 (/proc/cpuinfo)"),
    (None, AVX2_HOST | {"avx512f", "avx512bw"}, {}, False, "no avx512_bf16/amx_bf16"),
    ({"avx512_bf16"}, AVX2_HOST, {}, True, "avx512_bf16 (torch)"),   # torch's probe first
    (set(), SPR_HOST, {}, False, "(torch)"),
    (None, None, {}, False, "CPU features unknown"),
    # oneDNN capped below bf16: emulated, whatever the CPU has (an AVX2 host on this one)
    ({"avx512_bf16"}, SPR_HOST, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False,
     "ONEDNN_MAX_CPU_ISA=AVX2 caps oneDNN below AVX512_CORE_BF16"),
    ({"avx512_bf16"}, SPR_HOST, {"DNNL_MAX_CPU_ISA": "avx512_core"}, False, "AVX512_CORE caps"),
    ({"amx_bf16"}, SPR_HOST, {"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}, True, "amx_bf16"),
    ({"avx512_bf16"}, SPR_HOST, {"ONEDNN_MAX_CPU_ISA": "ALL"}, True, "avx512_bf16"),
])
def test_bf16_support(torch_flags, cpuinfo, env, native, says):
    got = bf16_support(torch_flags, cpuinfo, env)
    assert got.native is native and says in got.detail


def test_cpuinfo_flags_and_this_host(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n"
                    "flags\t\t: fpu\n")
    assert mp.cpuinfo_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert mp.cpuinfo_flags(str(tmp_path / "none")) is None
    for var in mp.ISA_CAP_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    # this host, whichever kind it is: torch's probes agree with the kernel's flags
    flags = mp.cpuinfo_flags()
    if flags is not None:
        assert mp.cpu_has_native_bf16() == bool(flags & set(mp.NATIVE_BF16_FLAGS))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not mp.cpu_has_native_bf16()


def _never(precision: str) -> float:
    raise AssertionError(f"no start-up check expected, got one for {precision}")


def test_auto_on_the_cpu_both_ways():
    checked: list[str] = []

    def check(precision: str) -> float:
        checked.append(precision)
        return 0.99998

    got = resolve_precision("auto", CPU, check, cpu_probe=lambda: NATIVE)
    assert (got.requested, got.chosen, got.cosine) == ("auto", "bf16", 0.99998)
    assert checked == ["bf16"] and "avx512_bf16" in got.reason and "0.999980" in got.reason
    got = resolve_precision("auto", CPU, _never, cpu_probe=lambda: EMULATED)
    assert got == PrecisionChoice("auto", "fp32", f"no native bf16 on this CPU: "
                                  f"{EMULATED.detail}", None)


@pytest.mark.parametrize("cosine", [0.998, math.nan])
def test_auto_falls_back_to_fp32_when_the_check_fails(cosine):
    got = resolve_precision("auto", CPU, lambda p: cosine, cpu_probe=lambda: NATIVE)
    assert got.chosen == "fp32" and "< 0.999" in got.reason
    assert got.cosine == cosine or (math.isnan(cosine) and math.isnan(got.cosine or 0.0))


@pytest.mark.parametrize("capability, chosen", [((9, 0), "bf16"), ((8, 0), "bf16"),
                                                ((7, 5), "fp16"), ((6, 1), "fp32")])
def test_auto_on_cuda_by_capability(capability, chosen):
    check = _never if chosen == "fp32" else (lambda p: 0.9999)
    got = resolve_precision("auto", torch.device("cuda"), check, capability=lambda d: capability,
                            cpu_probe=lambda: pytest.fail("the CPU is not asked on CUDA"))
    assert got.chosen == chosen and f"{capability[0]}.{capability[1]}" in got.reason


@pytest.mark.parametrize("requested, probe", [("bf16", EMULATED), ("fp32", NATIVE),
                                              ("fp16", NATIVE)])
def test_an_explicit_precision_wins(requested, probe):
    got = resolve_precision(requested, CPU, _never, cpu_probe=lambda: probe)
    assert (got.requested, got.chosen, got.cosine) == (requested, requested, None)
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        resolve_precision("int8", CPU, _never)


def test_choice_round_trips_through_json():
    choice = PrecisionChoice("auto", "bf16", "native", 0.99991)
    assert PrecisionChoice.from_dict(choice.to_dict()) == choice
    assert PrecisionChoice.from_dict({"requested": "fp32", "chosen": "fp32"}).cosine is None


def test_probe_images_are_deterministic():
    a, b = mp.probe_images(2), mp.probe_images(2)
    assert [np.asarray(i).tobytes() for i in a] == [np.asarray(i).tobytes() for i in b]
    assert a[0].mode == "RGB" and np.asarray(a[0]).std() > 10


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return build_model("tiny", [("a", 3), ("b", 4)])


def test_embedder_auto_runs_the_start_up_check(tiny_net, monkeypatch):
    """A real model: bf16 (checked against fp32) where the CPU is native, fp32 elsewhere;
    explicit settings unchanged."""
    images, attrs = mp.probe_images(2, seed=5), ["a", "b"]
    fp32 = Embedder(tiny_net, device="cpu", precision="fp32")
    assert fp32.precision_choice == mp.explicit("fp32")
    ref = fp32.embed(images, attrs)
    monkeypatch.setattr(mp, "cpu_bf16_support", lambda: NATIVE)
    auto = Embedder(tiny_net, device="cpu", precision="auto")
    assert auto.precision == "bf16" and auto.precision_choice.chosen == "bf16"
    assert auto.precision_choice.cosine is not None and auto.precision_choice.cosine >= 0.999
    low = auto.embed(images, attrs)
    assert not np.array_equal(low, ref) and (low * ref).sum(-1).min() >= 0.999
    monkeypatch.setattr(mp, "cpu_bf16_support", lambda: EMULATED)
    auto = Embedder(tiny_net, device="cpu", precision="auto")
    assert (auto.precision, auto.precision_choice.cosine) == ("fp32", None)
    np.testing.assert_array_equal(auto.embed(images, attrs), ref)
    with pytest.raises(ValueError, match="fp16 is only offered on CUDA"):
        Embedder(tiny_net, device="cpu", precision="fp16")
