"""ASEN_PRECISION=auto in the service: the default, the model the service loads with it on
either kind of CPU (the CPU's flags substituted), and the choice in /v1/admin/status, the
answers' model section and /metrics."""

from __future__ import annotations

import pytest
from service_fakes import ADMIN_KEY, FakeEmbedder
from testkit import tiny_checkpoint

import model.precision as mp
from model.embedder import Embedder
from model.precision import CpuBf16, PrecisionChoice
from service.settings import Settings
from service.state import load_embedder

ADMIN = {"X-API-Key": ADMIN_KEY}


def test_auto_is_the_default(monkeypatch):
    monkeypatch.delenv("ASEN_PRECISION", raising=False)
    assert Settings().precision == "auto"
    monkeypatch.setenv("ASEN_PRECISION", "bf16")
    assert Settings().precision == "bf16"


@pytest.mark.parametrize("native, chosen", [(True, "bf16"), (False, "fp32")])
def test_the_service_loads_bf16_only_on_a_cpu_with_native_bf16(tmp_path, monkeypatch,
                                                               native, chosen):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", [("a", 3), ("b", 4)])
    monkeypatch.setattr(mp, "cpu_bf16_support", lambda: CpuBf16(native, "test"))
    # the start-up check itself is tested in tests/model/test_precision.py; bf16 is slow to
    # run on a CPU without it, such as many test machines
    monkeypatch.setattr(Embedder, "_cosine_to_fp32", lambda self, precision: 0.99995)
    emb = load_embedder(ckpt, Settings(device="cpu", precision="auto"))
    choice = emb.precision_choice
    assert (choice.requested, choice.chosen) == ("auto", chosen)
    assert choice.cosine == (0.99995 if native else None)   # checked only where bf16 is native
    # an explicit setting wins
    assert load_embedder(ckpt, Settings(device="cpu", precision="fp32")).precision_choice == \
        mp.explicit("fp32")


def test_status_answers_and_metrics_report_the_choice(make_client):
    choice = PrecisionChoice("auto", "bf16", "native bf16 on this CPU: avx512_bf16 (torch); "
                             "start-up check: bf16 cosine to fp32 0.999981 >= 0.999", 0.999981)
    client = make_client(embedder=FakeEmbedder(precision_choice=choice), precision="auto")
    body = client.get("/v1/admin/status", headers=ADMIN).json()
    assert body["precision"] == choice.to_dict()
    assert body["model"]["precision"] == "bf16"
    text = client.get("/metrics").text
    assert 'asen_model_precision{precision="bf16",requested="auto"} 1.0' in text


def test_an_explicit_precision_is_reported_as_such(app_client):
    body = app_client.get("/v1/admin/status", headers=ADMIN).json()
    assert body["precision"] == {"requested": "fp32", "chosen": "fp32",
                                 "reason": "requested explicitly", "cosine": None}
    assert 'asen_model_precision{precision="fp32",requested="fp32"} 1.0' in \
        app_client.get("/metrics").text
