"""Two-stage training: a tiny end-to-end run, exact resume, the saved checkpoints."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from testkit import REPO_ROOT, synthetic_dataset

from model import load_model
from model.checkpoint import read_checkpoint_file
from model.config import TRAIN_CONFIGS, get_train_config
from model.errors import CheckpointError
from model.training.train import (
    RunState,
    UsageError,
    _log_estimate,
    build_parser,
    config_from_args,
    epoch_triplets,
    main,
    planned_triplets,
    run,
    setup_training,
    triplet_loss,
    update_attr_loss,
)

CFG = replace(TRAIN_CONFIGS["tiny"], triplets_per_epoch=32, batch_size=8, valid_limit=4,
              stage1=replace(TRAIN_CONFIGS["tiny"].stage1, epochs=2))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """96 synthetic images of 64 px (48 train, 24 valid, 24 test); read-only."""
    return synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=3, n_train=48, n_valid=24,
                             n_test=24)


class Interrupt(Exception):
    pass


class Messages(logging.Handler):
    """The training log's messages; raises Interrupt at the first that starts with
    ``stop_at``."""

    def __init__(self, stop_at: str | None = None):
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.stop_at = stop_at

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.stop_at is not None and self.messages[-1].startswith(self.stop_at):
            raise Interrupt


@contextlib.contextmanager
def training_log(stop_at: str | None = None) -> Iterator[list[str]]:
    """The messages `run` logs (logger model.training.train) while the block runs."""
    handler, logger = Messages(stop_at), logging.getLogger("model.training.train")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_triplet_loss_matches_definition():
    x = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 1.0]])    # cos 0.7071
    n = torch.tensor([[0.0, 1.0]])    # cos 0
    assert float(triplet_loss(x, p, n, 0.2)) == 0.0
    assert float(triplet_loss(x, n, p, 0.2)) == pytest.approx(0.2 + 0.70710678, abs=1e-6)


def test_two_stage_run_and_evaluate(dataset, tmp_path):
    with training_log() as logs:
        best = run(dataset, tmp_path / "run", CFG)
    assert best.exists() and (tmp_path / "run" / "best_stage1.pt").exists()
    assert any("img/s" in m and "lr" in m and "loss" in m for m in logs)
    stage1 = load_model(tmp_path / "run" / "best_stage1.pt", device="cpu")
    full = load_model(best, device="cpu")
    assert stage1.dim == 64 and full.dim == 128
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["stage"] for h in history] == [1, 1, 2]
    # stage 1 is validated by what it trains, the global block (the local branch is untrained)
    best1 = max((h for h in history if h["stage"] == 1), key=lambda h: h["valid_map"])
    from model.training.evaluate import evaluate_split
    again = evaluate_split(stage1, dataset, "valid", limit=CFG.valid_limit, loc_limit=0)
    assert again["overall"] == pytest.approx(best1["valid_map"], abs=1e-6)
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "model.evaluate", "--data", str(dataset),
                           "--checkpoint", str(best), "--split", "test", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert 0.0 < report["overall"] <= 100.0
    assert "overall" in proc.stdout


@pytest.mark.parametrize("cfg", [
    CFG,
    replace(CFG, attribute_sampling="loss", model_overrides={"center_embeddings": True}),
    replace(CFG, starts=2, attribute_sampling="loss", model_overrides={"center_embeddings": True}),
], ids=["paper-recipe", "loss-sampling-centred", "random-restarts"])
def test_resume_continues_exactly(dataset, tmp_path, cfg):
    straight = run(dataset, tmp_path / "a", cfg)
    with pytest.raises(Interrupt), training_log(stop_at="stage 1 epoch 2/"):  # crash there
        run(dataset, tmp_path / "b", cfg)
    ts = read_checkpoint_file(tmp_path / "b" / "last.pt")["train_state"]
    assert (ts["stage"], ts["epoch"]) == (1, 1)
    resumed = run(dataset, tmp_path / "b", cfg, resume=tmp_path / "b" / "last.pt")
    a = read_checkpoint_file(tmp_path / "a" / "last.pt")
    b = read_checkpoint_file(tmp_path / "b" / "last.pt")
    assert a["train_state"]["history"][-1]["loss"] == b["train_state"]["history"][-1]["loss"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert straight.name == resumed.name == "best.pt"
    assert a["train_state"]["attr_loss"] == b["train_state"]["attr_loss"]


def test_random_restarts_keep_the_start_whose_weakest_attribute_is_best(dataset, tmp_path):
    cfg = replace(CFG, starts=3, start_epochs=2, model_overrides={"center_embeddings": True},
                  stage1=replace(CFG.stage1, epochs=3), stage2=replace(CFG.stage2, epochs=0))
    with training_log() as logs:
        run(dataset, tmp_path / "r", cfg)
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    starts = [h for h in history if "start" in h]
    assert [(h["start"], h["epoch"]) for h in starts] == [(0, 2), (1, 2), (2, 2)]
    assert len({h["loss"] for h in starts}) == 3, "the starts did not start apart"
    chosen = max(starts, key=lambda h: h["valid_weakest"])
    going_on = [m for m in logs if m.startswith("stage 1: going on")]
    assert going_on == [f"stage 1: going on from the start with weakest attribute at "
                        f"{chosen['valid_weakest']:.2f}%"]
    later = [h for h in history if "start" not in h]
    assert [(h["stage"], h["epoch"]) for h in later] == [(1, 3)]
    with pytest.raises(ValueError, match="starts"):
        replace(CFG, starts=0)
    with pytest.raises(ValueError, match="start_epochs"):
        replace(CFG, start_epochs=3)


def test_each_random_start_draws_its_own_triplets(dataset):
    """Start 0 keeps a plain run's triplets; the others draw their own (docs/RESULTS.md: the
    draw, more than the initialisation, decides whether the button is found)."""
    setup = setup_training(dataset, CFG, "asen", torch.device("cpu"), None)

    def triplets(start: int, epoch: int = 0) -> list[list[int]]:
        return epoch_triplets(setup, CFG, RunState(epoch=epoch, start=start), 1)

    assert triplets(0) == epoch_triplets(setup, CFG, RunState(), 1)
    assert triplets(1) == triplets(1)
    assert len({str(triplets(j)) for j in range(3)}) == 3
    assert triplets(1, epoch=1) != triplets(1)


def test_agnostic_baseline_gives_one_embedding_for_all_attributes(dataset, tmp_path):
    cfg = replace(CFG, stage1=replace(CFG.stage1, epochs=1))
    best = run(dataset, tmp_path / "agn", cfg, variant="agnostic")
    emb = load_model(best, device="cpu")
    from PIL import Image
    img = Image.new("RGB", (80, 64), (120, 30, 30))
    every = emb.embed_all([img])
    assert torch.allclose(torch.from_numpy(every[0, 0]), torch.from_numpy(every[0, -1]))


def test_config_file_overrides(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"base": "small", "batch_size": 8, "stage2": {"epochs": 1}}))
    cfg = get_train_config(str(path))
    assert cfg.model == "small" and cfg.batch_size == 8 and cfg.stage2.epochs == 1
    assert cfg.stage1 == TRAIN_CONFIGS["small"].stage1


def test_every_ablation_config_file_parses():
    files = sorted((REPO_ROOT / "configs" / "ablation").glob("*.json"))
    assert files
    configs = {f.name: get_train_config(str(f)) for f in files}
    # every ablation step but the last isolates its own change: restarts only in the recipe
    assert TRAIN_CONFIGS["cpu"].starts > 1
    assert all(cfg.starts == 1 for cfg in configs.values())


def test_frozen_backbones_train_heads_only(dataset, tmp_path):
    from model import build_model
    from model.training.data import read_attributes

    cfg = replace(CFG, freeze_backbones=True, stage1=replace(CFG.stage1, epochs=1))
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg.model, read_attributes(dataset)).state_dict()
    best = run(dataset, tmp_path / "frozen", cfg)
    trained = read_checkpoint_file(best)["state_dict"]
    changed = {k for k, v in trained.items() if not torch.equal(v, initial[k])}
    assert changed, "nothing was trained"
    assert all(".basenet." not in k for k in changed), sorted(changed)[:3]
    assert any(".attnnet." in k for k in changed)


def test_loss_sampling_favours_the_attributes_with_higher_loss(dataset, tmp_path):
    cfg = replace(CFG, attribute_sampling="loss", triplets_per_epoch=64,
                  stage1=replace(CFG.stage1, epochs=2), stage2=replace(CFG.stage2, epochs=0))
    run(dataset, tmp_path / "w", cfg)
    ts = read_checkpoint_file(tmp_path / "w" / "last.pt")["train_state"]
    weights = np.asarray(ts["attr_loss"])        # the running loss of each attribute
    assert len(weights) == 6 and weights.min() > 0 and weights.max() > weights.min()
    # the next epoch draws each attribute in proportion to its running loss (and, without
    # "loss" sampling, uniformly whatever the losses)
    many = replace(cfg, triplets_per_epoch=6000)
    setup = setup_training(dataset, many, "asen", torch.device("cpu"), None)
    state = RunState(epoch=2, attr_loss=weights.tolist())

    def drawn(c) -> np.ndarray:
        attrs = [t[3] for t in epoch_triplets(setup, c, state, 1)]
        return np.bincount(attrs, minlength=6) / len(attrs)

    favoured = drawn(many)
    np.testing.assert_allclose(favoured, weights / weights.sum(), atol=0.02)
    gap = (weights.max() - weights.min()) / weights.sum()
    assert favoured[weights.argmax()] - favoured[weights.argmin()] > gap / 2
    np.testing.assert_allclose(drawn(replace(many, attribute_sampling="uniform")), 1 / 6,
                               atol=0.02)
    # the running loss: half the last value and half the epoch's mean (the margin at first);
    # an attribute with no triplet in the epoch keeps its value
    fresh = RunState()
    update_attr_loss(fresh, cfg, np.array([0.4, np.nan, 0.0, 0.1, 0.2, 0.3]))
    assert fresh.attr_loss == pytest.approx([0.3, 0.2, 0.1, 0.15, 0.2, 0.25])
    update_attr_loss(fresh, cfg, np.array([np.nan, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert fresh.attr_loss == pytest.approx([0.3, 0.1, 0.05, 0.075, 0.1, 0.125])
    with pytest.raises(ValueError, match="attribute_sampling"):
        replace(CFG, attribute_sampling="hardest")


def test_trunk_cache_persists_and_reruns_exactly(dataset, tmp_path):
    cfg = replace(CFG, freeze_backbones=True, stage1=replace(CFG.stage1, epochs=1),
                  stage2=replace(CFG.stage2, epochs=0))
    cache = tmp_path / "cache"
    first = run(dataset, tmp_path / "one", cfg, trunk_cache_dir=cache)
    files = list(cache.glob("trunk-*.pt"))
    assert len(files) == 1
    stored = torch.load(files[0], weights_only=True)
    assert stored and all(v.dtype == torch.float32 for v in stored.values())
    mtime = files[0].stat().st_mtime_ns
    second = run(dataset, tmp_path / "two", cfg, trunk_cache_dir=cache)
    assert files[0].stat().st_mtime_ns == mtime          # read, not written again
    a, b = read_checkpoint_file(first)["state_dict"], read_checkpoint_file(second)["state_dict"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    other = replace(cfg, model_overrides={"global_branch": {"input_size": 48}})
    run(dataset, tmp_path / "three", other, trunk_cache_dir=cache)
    assert len(list(cache.glob("trunk-*.pt"))) == 2     # another trunk input: its own file


def cli_config(*argv: str):
    """`config_from_args` of ``python -m model.train --data d --out o ARGV``."""
    return config_from_args(build_parser().parse_args(["--data", "d", "--out", "o", *argv]))


def test_cli_shortens_the_cpu_recipe_and_refuses_non_positive_counts(capsys):
    cfg, variant = cli_config("--config", "cpu", "--epochs1", "1", "--epochs2", "1")
    assert (cfg.stage1.epochs, cfg.stage2.epochs, cfg.start_epochs) == (1, 1, 1)
    assert cfg.starts == TRAIN_CONFIGS["cpu"].starts and variant == "asen"
    cfg, _ = cli_config("--config", "cpu", "--epochs1", "3", "--starts", "1")
    assert (cfg.stage1.epochs, cfg.start_epochs, cfg.starts) == (3, 2, 1)
    cfg, _ = cli_config("--config", "cpu", "--epochs1", "3", "--start-epochs", "3")
    assert cfg.start_epochs == 3
    with pytest.raises(UsageError, match="start_epochs.*--start-epochs"):
        cli_config("--config", "cpu", "--epochs1", "1", "--start-epochs", "2")
    for flag in ["--triplets", "--epochs1", "--starts", "--start-epochs"]:
        with pytest.raises(SystemExit) as exit_:
            cli_config("--config", "cpu", flag, "0")
        assert exit_.value.code == 2
        assert f"{flag}: must be at least 1, not 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_config("--epochs2", "-1")
    assert cli_config("--config", "cpu", "--epochs2", "0")[0].stage2.epochs == 0


def test_default_config_fits_the_device():
    assert cli_config("--device", "cpu")[0] == TRAIN_CONFIGS["cpu"]
    assert cli_config("--device", "cuda")[0] == TRAIN_CONFIGS["paper"]
    assert "default: cpu on a CPU, paper on CUDA" in " ".join(build_parser().format_help().split())
    cpu = TRAIN_CONFIGS["cpu"]
    assert planned_triplets(cpu, [1, 2], RunState()) == (8 + 3 * 2 + 2) * 10_000
    assert planned_triplets(cpu, [1, 2], RunState(stage=2, epoch=1)) == 10_000


def test_cli_resumes_with_the_runs_own_recipe(dataset, tmp_path, capsys):
    cfg = replace(CFG, stage1=replace(CFG.stage1, epochs=1), stage2=replace(CFG.stage2, epochs=0))
    out = tmp_path / "run"
    with training_log() as logs:
        run(dataset, out, cfg, variant="global")
    assert sum(m.startswith("expected duration: about ") for m in logs) == 1
    common = ["--data", str(dataset), "--out", str(out), "--resume", str(out / "last.pt")]
    assert main([*common, "--config", "paper"]) == 2
    err = capsys.readouterr().err
    assert "--config paper differs from the recipe" in err and "leave --config out" in err
    assert main([*common, "--variant", "asen"]) == 2
    assert "the run being resumed is global" in capsys.readouterr().err
    resumed, variant = config_from_args(build_parser().parse_args(common))
    assert (resumed, variant) == (cfg, "global")
    config_file = tmp_path / "same.json"
    config_file.write_text(json.dumps(cfg.to_dict()))
    assert config_from_args(build_parser().parse_args([*common, "--config", str(config_file)])
                            )[0] == cfg
    assert main(common) == 0
    assert "best checkpoint:" in capsys.readouterr().out
    assert main([*common[:-1], str(out / "best.pt")]) == 1
    assert "no training state" in capsys.readouterr().err


def fake_torchvision_weights(path, arch: str, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision ``arch`` state dict (random, seeded) saved at ``path``; layer4 and fc
    left out to keep the file small (the trunks ignore them anyway)."""
    import torchvision
    torch.manual_seed(seed)
    state = {k: v for k, v in getattr(torchvision.models, arch)(weights=None).state_dict().items()
             if not k.startswith(("layer4.", "fc."))}
    torch.save(state, path)
    return state


def test_each_trunk_takes_its_own_imagenet_weights(dataset, tmp_path):
    g = fake_torchvision_weights(tmp_path / "r18.pth", "resnet18", seed=1)
    loc = fake_torchvision_weights(tmp_path / "r34.pth", "resnet34", seed=2)
    recipe = tmp_path / "resnets.json"       # paper's pair of trunks, at tiny sizes
    recipe.write_text(json.dumps({"base": "tiny", "model_overrides": {
        "global_branch": {"backbone": "resnet18"}, "local_branch": {"backbone": "resnet34"}}}))
    files = ["--global-backbone-weights", str(tmp_path / "r18.pth"),
             "--local-backbone-weights", str(tmp_path / "r34.pth")]
    cfg, _ = cli_config("--config", str(recipe), *files)
    assert cfg.backbone_weights == {"global": str(tmp_path / "r18.pth"),
                                    "local": str(tmp_path / "r34.pth")}
    setup = setup_training(dataset, cfg, "asen", torch.device("cpu"), None)
    for name, state in [("global", g), ("local", loc)]:
        trunk = setup.net.branch(name).basenet.state_dict()
        assert all(torch.equal(trunk[k], state[k].to(trunk[k].device)) for k in trunk), name
    assert setup_training(dataset, cfg, "global", torch.device("cpu"), None).net.has_local is False
    # the same in a JSON config file
    recipe.write_text(json.dumps({**json.loads(recipe.read_text()), "backbone_weights": {
        "global": str(tmp_path / "r18.pth"), "local": str(tmp_path / "r34.pth")}}))
    assert cli_config("--config", str(recipe))[0] == cfg
    # one file for both trunks: the ResNet-34 local trunk refuses ResNet-18 weights
    one, _ = cli_config("--config", str(recipe), "--backbone-weights", str(tmp_path / "r18.pth"))
    with pytest.raises(CheckpointError, match="shape mismatch|lack"):
        setup_training(dataset, one, "asen", torch.device("cpu"), None)
    with pytest.raises(ValueError, match="backbone_weights"):
        replace(cfg, backbone_weights={"glob": "x"})


class _Cache:
    """A trunk cache with 50 images left to compute (all _log_estimate asks of one)."""

    def missing(self) -> int:
        return 50


def test_estimate_counts_a_cached_trunk_once_per_image():
    # 10 timed triplets in 2 s, of which 1 s made 20 trunk passes: 10 triplets/s without
    # the trunk, 50 ms a trunk pass -> 1000 / 10 + 50 * 0.05 = 102.5 s ("2 min"); charging the
    # trunk to every triplet would say 200 s ("3 min")
    setup = SimpleNamespace(estimated=set(), planned={1: 1000, 2: 100}, planned_triplets=1100,
                            trunk_cache=_Cache())
    with training_log() as logs:
        _log_estimate(setup, 1, 10, 2.0, 5, (20, 1.0))
        _log_estimate(setup, 1, 10, 2.0, 5, (20, 1.0))       # once a stage
        _log_estimate(setup, 2, 10, 4.0, 5)
    assert logs == [
        "expected duration: about 2 min for stage 1's 1000 triplets (10.0 triplets/s over 5 "
        "batches, and the trunk for 50 images not cached yet; validation extra; stage 2 is "
        "estimated when it starts)",
        "expected duration: about 40 s for stage 2's 100 triplets (2.5 triplets/s over 5 "
        "batches; validation extra)"]
