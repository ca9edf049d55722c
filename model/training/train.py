"""Two-stage ASEN++ training (SPEC section 4).

    python -m model.train --data DIR --out RUN_DIR [--config NAME_OR_FILE] [--resume CKPT]
                          [--init CKPT]

Stage 1 trains the global branch alone; stage 2 trains the whole model from the best stage-1
weights with the local branch at a higher learning rate. ``--variant agnostic`` trains the
attribute-agnostic triplet baseline (one embedding for every attribute) with the stage-1
recipe. Every epoch writes ``RUN_DIR/last.pt`` (weights + optimizer, scheduler, RNG, epoch),
the best epoch by validation MAP goes to ``best_stage1.pt`` / ``best.pt``, and ``--resume``
continues an interrupted run where it stopped. ``--init`` fine-tunes an existing checkpoint:
its trunks, shared heads and the rows of every attribute whose name the data has too are the
starting point, new attributes start fresh, one start replaces the random starts, and every
checkpoint of the run records where it started (``model.training.finetune``). The recipes
(`TrainConfig`, `TRAIN_CONFIGS`) are in `model.config`; progress is logged (logger
``model.training.train``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import operator
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import InitProvenance, build_model, read_checkpoint_file, save_checkpoint
from model.config import (
    TRAIN_CONFIGS,
    ModelConfig,
    StageConfig,
    TrainConfig,
    get_config,
    get_train_config,
)
from model.embedder import Embedder, pick_device
from model.errors import CheckpointError
from model.imageio import open_image
from model.memory import keep_freed_memory
from model.network import ASENPlusPlus
from model.osutil import replace_atomically
from model.preprocess import PreparedImage, Preprocessor
from model.training.data import DataError, TripletSampler, load_split, read_attributes
from model.training.evaluate import evaluate_split
from model.training.finetune import architecture_differences, init_architecture, init_from

log = logging.getLogger(__name__)

__all__ = [
    "TRAIN_CONFIGS", "RunState", "StageConfig", "TrainConfig", "TrainingSetup", "epoch_triplets",
    "get_train_config", "main", "make_optimizer", "run", "set_train_mode", "setup_training",
    "train_epoch", "train_step", "triplet_loss", "triplet_losses", "update_attr_loss",
]


# -- data --------------------------------------------------------------------------------------

class TrunkCache:
    """Global-trunk outputs by image id, for a frozen trunk (exact: eval-mode BN, no
    augmentation). Computed on first use, a batch at a time.

    With ``path`` the outputs persist in that file (float32, so reloading is exact) and later
    runs with the same trunk weights, input size and images start from it; :func:`cache_file`
    names it.
    """

    def __init__(self, net: ASENPlusPlus, images: ImageCache, device: torch.device,
                 path: Path | None = None):
        self.net, self.images, self.device, self.path = net, images, device, path
        self._cache: dict[int, torch.Tensor] = {}
        self._saved = 0
        self.computed, self.compute_seconds = 0, 0.0   # trunk passes made here, their time
        if path is not None and path.is_file():
            self._cache = torch.load(path, map_location=device, weights_only=True)
            self._saved = len(self._cache)

    @torch.no_grad()
    def features(self, ids: Sequence[int]) -> torch.Tensor:
        todo = sorted({i for i in ids if i not in self._cache})
        if todo:
            t0 = time.perf_counter()
            pixels = torch.stack([self.images[i].pixels for i in todo]).to(self.device)
            feats = self.net.trunk(pixels.contiguous(memory_format=torch.channels_last))
            for i, f in zip(todo, feats, strict=True):
                self._cache[i] = f.clone()
            self.computed += len(todo)
            self.compute_seconds += time.perf_counter() - t0
        return torch.stack([self._cache[i] for i in ids])

    def missing(self) -> int:
        """Images whose trunk outputs are not cached yet."""
        return len(self.images.paths) - len(self._cache)

    def save(self) -> None:
        """Write the file when outputs were added since it was read or written."""
        if self.path is None or len(self._cache) == self._saved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        outputs = {i: f.cpu() for i, f in self._cache.items()}
        replace_atomically(self.path, lambda tmp: torch.save(outputs, tmp))
        self._saved = len(self._cache)


def cache_file(cache_dir: Path, net: ASENPlusPlus, image_paths: Sequence[Path]) -> Path:
    """Where the trunk outputs of ``net`` on ``image_paths`` are kept in ``cache_dir``."""
    h = hashlib.sha256()
    h.update(json.dumps([asdict(net.config.global_branch),
                         [str(p) for p in image_paths]]).encode())
    for key, value in net.branch("global").basenet.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return cache_dir / f"trunk-{h.hexdigest()[:16]}.pt"


class ImageCache:
    """Prepared images by id, decoded on first use (no augmentation, so caching is exact)."""

    def __init__(self, paths: Sequence[Path], preprocess: Preprocessor):
        self.paths = list(paths)
        self.preprocess = preprocess
        self._cache: dict[int, PreparedImage] = {}

    def __getitem__(self, image_id: int) -> PreparedImage:
        if image_id not in self._cache:
            self._cache[image_id] = self.preprocess(open_image(self.paths[image_id]))
        return self._cache[image_id]


# -- losses ------------------------------------------------------------------------------------

def triplet_losses(x: torch.Tensor, p: torch.Tensor, n: torch.Tensor,
                   margin: float) -> torch.Tensor:
    """Margin ranking on cosine similarities, per triplet: max(0, margin - cos(x,p) + cos(x,n))."""
    return F.relu(margin - F.cosine_similarity(x, p) + F.cosine_similarity(x, n))


def triplet_loss(x: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """The mean of :func:`triplet_losses`."""
    return triplet_losses(x, p, n, margin).mean()


def alignment_losses(gs: Sequence[torch.Tensor], ls: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per triplet: 1 - cos(g, l) summed over anchor, positive and negative."""
    terms = [1 - F.cosine_similarity(g, l) for g, l in zip(gs, ls, strict=True)]
    return functools.reduce(operator.add, terms)


# -- the loop ----------------------------------------------------------------------------------

@dataclass
class RunState:
    stage: int = 1
    epoch: int = 0                      # epochs completed in the current stage
    best_map: float = -1.0
    history: list[dict] = field(default_factory=list)
    attr_loss: list[float] | None = None  # running loss per attribute ("loss" sampling)
    start: int = 0                      # which random start of stage 1 (its own triplets)


@dataclass
class TrainingSetup:
    """What every epoch of a run uses."""

    net: ASENPlusPlus
    model_cfg: ModelConfig
    stages: list[int]
    sampler: TripletSampler
    images: ImageCache
    trunk_cache: TrunkCache | None
    device: torch.device
    planned_triplets: int = 0     # what the run has left to train
    planned: dict[int, int] = field(default_factory=dict)   # ... per stage, for the estimates
    estimated: set[int] = field(default_factory=set)        # stages whose estimate was logged
    init: InitProvenance | None = None   # where a fine-tuned run started (--init)

    def provenance(self) -> dict[str, Any]:
        """The checkpoints' ``init`` entry (empty for a run from scratch)."""
        return {"init": self.init.to_dict()} if self.init is not None else {}


def set_train_mode(net: ASENPlusPlus, frozen: bool) -> None:
    """Training mode, with frozen trunks kept in eval mode (fixed BatchNorm statistics)."""
    net.train()
    for name in net.choices:
        branch = net.branch(name)
        branch.basenet.requires_grad_(not frozen)
        if frozen:
            branch.basenet.eval()


def make_optimizer(net: ASENPlusPlus, stage: int, cfg: StageConfig,
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    """Adam over the trainable weights of ``stage`` with its StepLR schedule: stage 1 the
    global branch at ``cfg.lr``; stage 2 the global branch at ``cfg.lr_global`` and the rest
    of the local branch at ``cfg.lr``."""
    glob = [p for p in net.branch("global").parameters() if p.requires_grad]
    params: list[dict[str, Any]]
    if stage == 1:
        params = [{"params": glob, "lr": cfg.lr}]
    else:
        local_only = [p for n, p in net.branch("local").named_parameters()
                      if not n.startswith("attrnet.") and p.requires_grad]
        params = [{"params": glob, "lr": cfg.lr_global}, {"params": local_only, "lr": cfg.lr}]
    opt = torch.optim.Adam(params)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step, gamma=cfg.gamma)
    return opt, sched


def train_step(net: ASENPlusPlus, batch: list[list[int]], images: ImageCache,
               stage: int, cfg: TrainConfig, device: torch.device,
               trunk_cache: TrunkCache | None = None) -> torch.Tensor:
    """The loss of each triplet of ``batch`` ([n]; the training loss is its mean)."""
    n = len(batch)
    ids = [t[i] for i in range(3) for t in batch]            # anchors, positives, negatives
    attr = torch.tensor([t[3] for t in batch] * 3, device=device)
    # the images themselves: for the trunk, or for the local branch's crops
    prepared = [images[i] for i in ids] if trunk_cache is None or stage == 2 else None
    pixels = feats = None
    if trunk_cache is not None:      # frozen trunk: its outputs are cached, no pixels needed
        feats = trunk_cache.features(ids)
    elif prepared is not None:
        pixels = torch.stack([p.pixels for p in prepared]).to(device)
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    out = net(pixels, attr, prepared, use_local=(stage == 2), features=feats)
    g = out.g.split(n)
    loss = triplet_losses(g[0], g[1], g[2], cfg.margin)
    if stage == 2:
        if out.l is None:
            raise ValueError("stage 2 needs a model with a local branch")
        l = out.l.split(n)
        loss = loss + cfg.local_weight * triplet_losses(l[0], l[1], l[2], cfg.margin)
        loss = loss + cfg.align_weight * alignment_losses(g, l)
    return loss


def validation_report(net: ASENPlusPlus, data: Path, cfg: TrainConfig,
                      device: torch.device, stage: int) -> dict[str, Any]:
    """MAP on the validation split (:func:`model.evaluate.evaluate_split`'s report); in stage 1
    by the global block alone, since the local branch is not trained yet."""
    emb = Embedder(net, device=device)
    report = evaluate_split(emb, data, "valid", limit=cfg.valid_limit, loc_limit=0,
                            part="global" if stage == 1 else "full")
    set_train_mode(net, cfg.freeze_backbones)
    return report


def validate(net: ASENPlusPlus, data: Path, cfg: TrainConfig, device: torch.device,
             stage: int) -> float:
    """The overall validation MAP (percent) of :func:`validation_report`."""
    return float(validation_report(net, data, cfg, device, stage)["overall"])


def _rng_state() -> dict[str, Any]:
    """Global RNG states in types that a weights-only torch.load accepts."""
    np_state = np.random.get_state(legacy=True)
    if isinstance(np_state, dict):      # never for the legacy MT19937 generator
        raise TypeError("numpy's global RNG state is not the legacy tuple")
    kind, keys, pos, has_gauss, gauss = np_state
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def model_config_for(cfg: TrainConfig, variant: str) -> ModelConfig:
    """The architecture a run trains: the named config, its overrides, then the variant.

    An override of ``global_branch`` / ``local_branch`` may be a dict of the fields to change.
    """
    base = get_config(cfg.model)
    overrides = {k: replace(getattr(base, k), **v) if isinstance(v, dict) else v
                 for k, v in cfg.model_overrides.items()}
    model_cfg = replace(base, **overrides)
    if variant == "agnostic":
        model_cfg = replace(model_cfg, name=f"{model_cfg.name}-agnostic", attribute_agnostic=True)
    if variant in ("agnostic", "global"):
        model_cfg = model_cfg.global_only()
    return model_cfg


def setup_training(data_dir: Path, cfg: TrainConfig, variant: str, dev: torch.device,
                   trunk_cache_dir: Path | None = None, init: Path | None = None,
                   weights: Mapping[str, torch.Tensor] | None = None) -> TrainingSetup:
    """Everything a run's epochs use: the freshly built network on ``dev`` (seeded by
    ``cfg.seed``), its stages, the training split's triplet sampler and image cache, and for
    frozen trunks the trunk-output cache (kept in ``trunk_cache_dir`` when given).

    The network starts from the checkpoint ``init`` (:func:`model.training.finetune.init_from`)
    or from ``weights`` (a resumed run's) when given, before the trunk cache is keyed."""
    attrs = read_attributes(data_dir)
    model_cfg = model_config_for(cfg, variant)
    stages = [1] + ([2] if model_cfg.local_branch is not None and cfg.stage2.epochs > 0 else [])
    torch.manual_seed(cfg.seed)
    net = build_model(model_cfg, attrs, backbone_weights=_trunk_weights(cfg, model_cfg))
    provenance = init_from(net, init) if init is not None else None
    if weights is not None:
        net.load_state_dict(weights)
    net = net.to(dev).to(memory_format=torch.channels_last)  # as the embedder runs it
    train = load_split(data_dir, "train")
    images = ImageCache(train.image_paths, Preprocessor(model_cfg.global_branch.input_size))
    trunk_cache = None
    if cfg.freeze_backbones:
        path = cache_file(trunk_cache_dir, net, train.image_paths) if trunk_cache_dir else None
        trunk_cache = TrunkCache(net, images, dev, path)
    return TrainingSetup(net, model_cfg, stages, TripletSampler(train.labels, len(attrs)),
                         images, trunk_cache, dev, init=provenance)


def _trunk_weights(cfg: TrainConfig, model_cfg: ModelConfig,
                   ) -> str | dict[str, str | Path] | None:
    """``cfg.backbone_weights`` for the trunks ``model_cfg`` has (a stage-1-only model has no
    local trunk)."""
    if not isinstance(cfg.backbone_weights, dict):
        return cfg.backbone_weights
    return {k: v for k, v in cfg.backbone_weights.items()
            if k == "global" or model_cfg.local_branch is not None}


def planned_triplets(cfg: TrainConfig, stages: Sequence[int], state: RunState,
                     stage: int | None = None) -> int:
    """The triplets a run from ``state`` has left to train (random starts included), in all
    or in one ``stage``."""
    epochs = 0
    if state.stage == 1 and stage in (None, 1):
        epochs += cfg.stage1.epochs - state.epoch
        if state.epoch == 0 and cfg.starts > 1:
            epochs += (cfg.starts - 1) * cfg.start_epochs
    if 2 in stages and stage in (None, 2):
        epochs += cfg.stage2.epochs - (state.epoch if state.stage == 2 else 0)
    return epochs * cfg.triplets_per_epoch


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _log_estimate(setup: TrainingSetup, stage: int, triplets: int, seconds: float,
                  batches: int, trunk: tuple[int, float] = (0, 0.0)) -> None:
    """Log, once a stage, the expected duration of its training steps from a measured rate.

    ``trunk``: the trunk passes of the timed batches and their seconds. A frozen trunk's
    outputs are cached, so its cost is counted once per image not yet cached, not once per
    triplet (counting it per triplet overstated a ``cpu`` run several times over)."""
    if stage in setup.estimated or seconds <= 0 or triplets <= 0:
        return
    setup.estimated.add(stage)
    planned = setup.planned.get(stage, setup.planned_triplets)
    computed, trunk_s = trunk
    rate = triplets / max(seconds - trunk_s, 1e-9)
    total = planned / rate
    cache = ""
    if computed and setup.trunk_cache is not None:
        missing = setup.trunk_cache.missing()
        total += missing * trunk_s / computed
        cache = f", and the trunk for {missing} images not cached yet"
    later = "; stage 2 is estimated when it starts" if stage == 1 and 2 in setup.planned else ""
    log.info("expected duration: about %s for stage %d's %d triplets (%.1f triplets/s over %d "
             "batches%s; validation extra%s)", _duration(total), stage, planned,
             rate, batches, cache, later)


def _resume_data(resume: Path) -> dict[str, Any]:
    """The contents of ``resume``, a checkpoint with a training state."""
    data = read_checkpoint_file(resume)
    if "train_state" not in data:
        raise CheckpointError(f"{resume}: has no training state to resume from (use last.pt)")
    return data


def _restore(resume: Path, data: Mapping[str, Any]) -> tuple[RunState, dict[str, Any]]:
    """Global RNGs from ``resume``'s ``data`` (its weights are already in the network);
    returns the run state and optimizer states."""
    ts = data["train_state"]
    _set_rng_state(ts["rng"])
    log.info("resumed from %s: stage %s, %s epochs done", resume, ts["stage"], ts["epoch"])
    state = RunState(ts["stage"], ts["epoch"], ts["best_map"], ts["history"], ts.get("attr_loss"))
    return state, {"optimizer": ts["optimizer"], "scheduler": ts["scheduler"]}


def _start_stage2(net: ASENPlusPlus, out: Path) -> None:
    """Stage 2 starts from the best stage-1 weights (the local branch as initialised)."""
    best1 = read_checkpoint_file(out / "best_stage1.pt")["state_dict"]
    missing = net.load_state_dict(best1, strict=False).missing_keys
    if not all(k.startswith("choices.local.") for k in missing):
        raise ValueError(f"{out / 'best_stage1.pt'}: lacks global weights, e.g. {missing[0]!r}")
    log.info("stage 2: starting from best_stage1.pt")


def epoch_triplets(setup: TrainingSetup, cfg: TrainConfig, state: RunState,
                   stage: int) -> list[list[int]]:
    """The triplets ``[anchor, positive, negative, attribute]`` of the epoch after
    ``state.epoch``: a draw of its own for each seed, stage, epoch and random start, by
    attribute weights of ``state.attr_loss`` with "loss" sampling."""
    # start 0 (the run itself) keeps the stream of a run without restarts
    key = [cfg.seed, stage, state.epoch] + ([state.start] if state.start else [])
    rng = np.random.default_rng(key)
    weights = state.attr_loss if cfg.attribute_sampling == "loss" else None
    return setup.sampler.sample(cfg.triplets_per_epoch, rng, weights).tolist()


def train_epoch(setup: TrainingSetup, cfg: TrainConfig, state: RunState, stage: int,
                n_epochs: int, opt: torch.optim.Optimizer) -> tuple[float, np.ndarray]:
    """One pass over fresh triplets (:func:`epoch_triplets`); the mean loss overall and per
    attribute index (NaN for an attribute that had no triplet). Logs progress every 50
    batches."""
    triplets = epoch_triplets(setup, cfg, state, stage)
    n_attrs = len(setup.net.attributes)
    attr_sum, attr_count = np.zeros(n_attrs), np.zeros(n_attrs)
    t0, seen, total = time.perf_counter(), 0, 0.0
    t1, seen1 = t0, 0          # the rate for the estimate leaves out the first batch (warm-up)
    trunk1 = _trunk_work(setup)
    for s in range(0, len(triplets), cfg.batch_size):
        batch = triplets[s:s + cfg.batch_size]
        losses = train_step(setup.net, batch, setup.images, stage, cfg, setup.device,
                            setup.trunk_cache)
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        attrs = np.array([t[3] for t in batch])
        np.add.at(attr_sum, attrs, losses.detach().double().cpu().numpy())
        np.add.at(attr_count, attrs, 1)
        seen += len(batch)
        total += float(loss.detach()) * len(batch)
        if s == 0:
            t1, seen1, trunk1 = time.perf_counter(), seen, _trunk_work(setup)
        elif s // cfg.batch_size == _ESTIMATE_BATCHES or seen == len(triplets):
            work = _trunk_work(setup)
            _log_estimate(setup, stage, seen - seen1, time.perf_counter() - t1,
                          s // cfg.batch_size, (work[0] - trunk1[0], work[1] - trunk1[1]))
        if (s // cfg.batch_size) % 50 == 0 or seen == len(triplets):
            rate = 3 * seen / (time.perf_counter() - t0)
            lrs = ",".join(f"{g['lr']:.2e}" for g in opt.param_groups)
            log.info("stage %d epoch %d/%d [%d/%d] loss %.4f lr %s %.1f img/s", stage,
                     state.epoch + 1, n_epochs, seen, len(triplets), total / seen, lrs, rate)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / seen, attr_sum / attr_count


_ESTIMATE_BATCHES = 5    # timed batches (after the first) behind the duration estimate


def _trunk_work(setup: TrainingSetup) -> tuple[int, float]:
    """Trunk passes the cache has made so far and their seconds ((0, 0) without a cache)."""
    cache = setup.trunk_cache
    return (cache.computed, cache.compute_seconds) if cache is not None else (0, 0.0)


def update_attr_loss(state: RunState, cfg: TrainConfig, epoch_attr_loss: np.ndarray) -> None:
    """Running per-attribute loss (half-life one epoch) that "loss" sampling weights by.

    Attributes not sampled this epoch keep their value; the start is the margin for all.
    """
    old = np.full(len(epoch_attr_loss), cfg.margin) if state.attr_loss is None else np.asarray(
        state.attr_loss)
    new = np.where(np.isnan(epoch_attr_loss), old, 0.5 * old + 0.5 * epoch_attr_loss)
    state.attr_loss = [float(max(x, 1e-3)) for x in new]


def _save_epoch(setup: TrainingSetup, out: Path, state: RunState, stage: int, valid_map: float,
                opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.StepLR,
                cfg: TrainConfig) -> None:
    """Best checkpoint of the stage (when improved) and ``last.pt`` with the training state."""
    best_name = "best_stage1.pt" if stage == 1 and len(setup.stages) > 1 else "best.pt"
    if valid_map > state.best_map:
        state.best_map = valid_map
        save_cfg = setup.model_cfg if stage == 2 else setup.model_cfg.global_only()
        _save_model(setup.net, save_cfg, out / best_name,
                    {"epoch": state.epoch, "stage": stage, "valid_map": valid_map},
                    setup.provenance())
    ts = {"stage": stage, "epoch": state.epoch, "best_map": state.best_map,
          "history": state.history, "attr_loss": state.attr_loss,
          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
          "rng": _rng_state(), "config": cfg.to_dict()}
    save_checkpoint(setup.net, out / "last.pt", {"train_state": ts, **setup.provenance()})


def reinit_heads(net: ASENPlusPlus, seed: int) -> None:
    """Fresh attribute table, global attention head and centring; trunks keep their weights."""
    torch.manual_seed(seed)
    branch = net.branch("global")
    for module in [*branch.attrnet.modules(), *branch.attnnet.modules()]:
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    if branch.center is not None:
        branch.center.running_mean.zero_()


@dataclass
class _Start:
    """One trained start of stage 1, kept until a better one turns up."""

    weakest: float
    valid_map: float
    weights: dict[str, torch.Tensor]
    opt_states: dict[str, Any]
    attr_loss: list[float] | None
    rng: dict[str, Any]


def _choose_start(setup: TrainingSetup, data_dir: Path, out: Path, cfg: TrainConfig,
                  state: RunState) -> dict[str, Any]:
    """Random restarts (``cfg.starts``): each start trains stage 1's first ``cfg.start_epochs``
    epochs from its own initialisation of the heads and on its own draw of triplets (start 0:
    the run's own); the start whose weakest attribute has the best validation MAP is kept, and
    ``state`` continues from it. Returns its optimizer states. A run stopped during the starts
    begins again.
    """
    initial = {k: v.clone() for k, v in setup.net.state_dict().items()}
    rng0 = _rng_state()
    best: _Start | None = None
    for j in range(cfg.starts):
        t0 = time.perf_counter()
        setup.net.load_state_dict(initial)
        _set_rng_state(rng0)
        if j:
            reinit_heads(setup.net, seed=1_000_003 * cfg.seed + j)
        set_train_mode(setup.net, cfg.freeze_backbones)
        opt, sched = make_optimizer(setup.net, 1, cfg.stage1)
        trial = RunState(history=state.history, start=j)
        while trial.epoch < cfg.start_epochs:
            loss, attr_loss = train_epoch(setup, cfg, trial, 1, cfg.stage1.epochs, opt)
            sched.step()
            update_attr_loss(trial, cfg, attr_loss)
            trial.epoch += 1
        report = validation_report(setup.net, data_dir, cfg, setup.device, stage=1)
        weakest = min(report["per_attribute"].values())
        state.history.append({"stage": 1, "epoch": trial.epoch, "start": j, "loss": loss,
                              "valid_map": report["overall"], "valid_weakest": weakest,
                              "valid_per_attribute": report["per_attribute"],
                              "seconds": round(time.perf_counter() - t0, 1)})
        per_attr = " ".join(f"{k} {v:.1f}" for k, v in report["per_attribute"].items())
        log.info("stage 1 start %d/%d: loss %.4f valid MAP %.2f%%, weakest attribute %.2f%% "
                 "(%s)", j + 1, cfg.starts, loss, report["overall"], weakest, per_attr)
        if best is None or weakest > best.weakest:
            best = _Start(weakest, float(report["overall"]),
                          {k: v.clone() for k, v in setup.net.state_dict().items()},
                          {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                          trial.attr_loss, _rng_state())
        if setup.trunk_cache is not None:
            setup.trunk_cache.save()
    if best is None:
        raise ValueError("no random start was trained (cfg.starts < 1)")
    setup.net.load_state_dict(best.weights)
    _set_rng_state(best.rng)
    state.epoch, state.attr_loss = cfg.start_epochs, best.attr_loss
    log.info("stage 1: going on from the start with weakest attribute at %.2f%%",
             best.weakest)
    opt, sched = make_optimizer(setup.net, 1, cfg.stage1)
    opt.load_state_dict(best.opt_states["optimizer"])
    sched.load_state_dict(best.opt_states["scheduler"])
    _save_epoch(setup, out, state, 1, best.valid_map, opt, sched, cfg)
    return best.opt_states


def _run_stage(setup: TrainingSetup, data_dir: Path, out: Path, cfg: TrainConfig,
               state: RunState, stage: int, opt_states: dict[str, Any] | None) -> None:
    """Train ``stage`` from ``state.epoch`` to its last epoch, validating and saving each."""
    scfg = cfg.stage1 if stage == 1 else cfg.stage2
    set_train_mode(setup.net, cfg.freeze_backbones)
    opt, sched = make_optimizer(setup.net, stage, scfg)
    if opt_states is not None:
        opt.load_state_dict(opt_states["optimizer"])
        sched.load_state_dict(opt_states["scheduler"])
    while state.epoch < scfg.epochs:
        t0 = time.perf_counter()
        loss, attr_loss = train_epoch(setup, cfg, state, stage, scfg.epochs, opt)
        sched.step()
        if setup.trunk_cache is not None:
            setup.trunk_cache.save()
        update_attr_loss(state, cfg, attr_loss)
        valid_map = validate(setup.net, data_dir, cfg, setup.device, stage)
        state.epoch += 1
        state.history.append({"stage": stage, "epoch": state.epoch, "loss": loss,
                              "valid_map": valid_map,
                              "seconds": round(time.perf_counter() - t0, 1)})
        log.info("stage %d epoch %d: loss %.4f valid MAP %.2f%%", stage, state.epoch, loss,
                 valid_map)
        _save_epoch(setup, out, state, stage, valid_map, opt, sched, cfg)


def run(data_dir: Path, out: Path, cfg: TrainConfig, variant: str = "asen",
        resume: Path | None = None, device: str | None = None,
        trunk_cache_dir: Path | None = None, init: Path | None = None) -> Path:
    """Train; returns the path of the best checkpoint of the final stage. Progress goes to
    this module's logger (INFO).

    ``trunk_cache_dir``: keep a frozen trunk's outputs there for later runs (:class:`TrunkCache`).
    ``init``: fine-tune that checkpoint (:mod:`model.training.finetune`), with one start from
    it in place of the recipe's random starts (which would re-initialise the heads).
    """
    keep_freed_memory()   # a step's activations are reused, not faulted in again (1.7x)
    if init is not None and resume is not None:
        raise ValueError("init and resume: a resumed run goes on from its own last.pt")
    if init is not None and cfg.starts > 1:
        log.info("--init: one start from %s in place of the recipe's %d random starts", init,
                 cfg.starts)
        cfg = replace(cfg, starts=1)
    resumed = _resume_data(resume) if resume is not None else None
    setup = setup_training(data_dir, cfg, variant, pick_device(device), trunk_cache_dir,
                           init=init, weights=resumed["state_dict"] if resumed else None)
    out.mkdir(parents=True, exist_ok=True)
    state: RunState = RunState()
    opt_states: dict[str, Any] | None = None
    if resume is not None and resumed is not None:
        state, opt_states = _restore(resume, resumed)
        if isinstance(resumed.get("init"), dict):
            setup.init = InitProvenance.from_dict(resumed["init"])
    _announce(setup, cfg, variant, out, state)
    for stage in setup.stages:
        if stage < state.stage:
            continue
        if stage == 2 and state.epoch == 0 and opt_states is None:
            _start_stage2(setup.net, out)
            state.best_map = -1.0
        if stage == 1 and state.epoch == 0 and cfg.starts > 1:
            opt_states = _choose_start(setup, data_dir, out, cfg, state)
        _run_stage(setup, data_dir, out, cfg, state, stage, opt_states)
        opt_states = None
        if stage == 1 and len(setup.stages) > 1:
            state = RunState(2, 0, -1.0, state.history, state.attr_loss)
    (out / "history.json").write_text(json.dumps(state.history, indent=2))
    if (out / "best.pt").is_file():   # value prototypes and tag calibration (issue 22)
        from model.training.prototype_fit import attach_prototypes
        attach_prototypes(out / "best.pt", data_dir, device)
    return out / "best.pt"


def _announce(setup: TrainingSetup, cfg: TrainConfig, variant: str, out: Path,
              state: RunState) -> None:
    """Log what the run will do and write ``train_config.json``."""
    setup.planned_triplets = planned_triplets(cfg, setup.stages, state)
    setup.planned = {st: n for st in setup.stages
                     if (n := planned_triplets(cfg, setup.stages, state, st)) > 0}
    log.info("training %s (%s) on %s: stage 1 %d epochs%s, stage 2 %d epochs, %d triplets "
             "an epoch", setup.model_cfg.name, variant, setup.device, cfg.stage1.epochs,
             f" after {cfg.starts} starts of {cfg.start_epochs}" if cfg.starts > 1 else "",
             cfg.stage2.epochs if 2 in setup.stages else 0, cfg.triplets_per_epoch)
    if (init := setup.init) is not None:
        log.info("init: %s (sha256 %s): %d attributes kept%s, new: %s", init.path,
                 init.sha256[:12], len(init.attributes_kept),
                 f" ({', '.join(init.attributes_revalued)} with other value counts)"
                 if init.attributes_revalued else "", ", ".join(init.attributes_new) or "none")
    (out / "train_config.json").write_text(json.dumps(
        {"train": cfg.to_dict(), "model": setup.model_cfg.to_dict(), "variant": variant,
         **setup.provenance()}, indent=2))


def _save_model(net: ASENPlusPlus, model_cfg: ModelConfig, path: Path,
                meta: dict[str, Any], extra: Mapping[str, Any] | None = None) -> None:
    """Save ``net`` restricted to ``model_cfg`` (a stage-1 model keeps its global branch),
    with ``meta`` as its ``training`` entry and the entries of ``extra``."""
    if model_cfg.local_branch is None and net.has_local:
        slim = ASENPlusPlus(model_cfg, net.attributes)
        slim.load_state_dict({k: v for k, v in net.state_dict().items()
                              if not k.startswith("choices.local.")})
        net = slim
    save_checkpoint(net, path, {"training": meta, **(extra or {})})


def _count(minimum: int) -> Any:
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    parse.__name__ = "count"
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="dataset folder (SPEC section 6)")
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints")
    p.add_argument("--config", help=f"{', '.join(TRAIN_CONFIGS)} or a JSON file (default: cpu "
                                     "on a CPU, paper on CUDA; with --resume, the run's own; "
                                     "with --init, the one named like its architecture)")
    p.add_argument("--resume", type=Path, help="a last.pt written by an interrupted run (its "
                                               "recipe and variant come with it)")
    p.add_argument("--init", type=Path,
                   help="fine-tune this checkpoint of the same architecture: trunks and the "
                        "attributes whose names match keep their weights, new attributes start "
                        "fresh; one start instead of the recipe's random starts")
    p.add_argument("--variant", choices=["asen", "global", "agnostic"],
                   help="asen (default): two stages; global: stage 1 only; agnostic: triplet "
                        "baseline")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--epochs1", type=_count(1), help="override stage-1 epochs (the random "
                   "starts' epochs are cut to it when longer)")
    p.add_argument("--epochs2", type=_count(0), help="override stage-2 epochs (0: none)")
    p.add_argument("--triplets", type=_count(1), help="override triplets per epoch")
    p.add_argument("--starts", type=_count(1), help="override the random restarts of stage 1")
    p.add_argument("--start-epochs", type=_count(1),
                   help="override the stage-1 epochs each random start trains")
    p.add_argument("--backbone-weights",
                   help="ImageNet weights file (torchvision format) for both trunks")
    p.add_argument("--global-backbone-weights", help="the same for the global trunk alone")
    p.add_argument("--local-backbone-weights", help="the same for the local trunk alone")
    p.add_argument("--seed", type=int)
    p.add_argument("--trunk-cache", type=Path,
                   help="folder keeping a frozen trunk's outputs between runs (same trunk, "
                        "input size and images: reused exactly)")
    return p


class UsageError(Exception):
    """A command line that cannot start or resume a run."""


def stored_run(resume: Path) -> tuple[TrainConfig, str | None]:
    """The recipe an interrupted run was started with (from the checkpoint, else the run
    folder's ``train_config.json``) and its variant (from ``train_config.json``)."""
    saved = resume.parent / "train_config.json"
    stored = json.loads(saved.read_text()) if saved.is_file() else {}
    data = read_checkpoint_file(resume)
    if "train_state" not in data:
        raise CheckpointError(f"{resume}: has no training state to resume from (use last.pt)")
    recipe = data["train_state"].get("config") or stored.get("train")
    if recipe is None:
        raise CheckpointError(f"{resume}: no training config in it nor in {saved}")
    return TrainConfig.from_dict(recipe), stored.get("variant")


def _override(cfg: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """``cfg`` with the command line's overrides."""
    overrides: dict[str, Any] = {}
    if args.epochs1 is not None:
        overrides["stage1"] = replace(cfg.stage1, epochs=args.epochs1)
        if args.start_epochs is None and cfg.start_epochs > args.epochs1:
            overrides["start_epochs"] = args.epochs1   # the starts fit the shorter stage
    if args.epochs2 is not None:
        overrides["stage2"] = replace(cfg.stage2, epochs=args.epochs2)
    for arg, key in [("triplets", "triplets_per_epoch"), ("seed", "seed"), ("starts", "starts"),
                     ("start_epochs", "start_epochs"), ("backbone_weights", "backbone_weights")]:
        if getattr(args, arg) is not None:
            overrides[key] = getattr(args, arg)
    trunks = {k: getattr(args, f"{k}_backbone_weights") for k in ("global", "local")}
    if any(trunks.values()):
        base = overrides.get("backbone_weights", cfg.backbone_weights)
        weights = dict(base) if isinstance(base, dict) else {k: base for k in trunks if base}
        weights.update({k: v for k, v in trunks.items() if v})
        overrides["backbone_weights"] = weights
    try:
        return replace(cfg, **overrides)
    except ValueError as exc:
        raise UsageError(f"{exc} (see --epochs1, --starts, --start-epochs)") from exc


def _differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [k for k in da if da[k] != db[k]]


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """The recipe and variant the command line asks for. A resumed run keeps its own; an
    explicit ``--config`` or ``--variant`` that differs is refused. With ``--init`` the
    architecture is the checkpoint's (:func:`init_config`)."""
    if args.init is not None:
        return init_config(args)
    if args.resume is None:
        name = args.config or ("paper" if pick_device(args.device).type == "cuda" else "cpu")
        return _override(_named_config(name), args), args.variant or "asen"
    stored, variant = stored_run(args.resume)
    cfg = _override(stored, args)
    if args.config is not None:
        wanted = _override(_named_config(args.config), args)
        if diff := _differences(wanted, cfg):
            raise UsageError(f"--config {args.config} differs from the recipe {args.resume} "
                             f"was trained with (in {', '.join(diff)}); leave --config out "
                             "to resume the run as it was")
    if args.variant is not None and variant is not None and args.variant != variant:
        raise UsageError(f"--variant {args.variant}: the run being resumed is {variant}")
    return cfg, args.variant or variant or "asen"


def init_config(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """The recipe of a run from ``--init``: ``--config``, by default the recipe named like the
    checkpoint's architecture (``cpu`` for the demo checkpoint); refused when its network
    differs from the checkpoint's, with ``--resume``, or with more than one start."""
    if args.resume is not None:
        raise UsageError("--init with --resume: a resumed run goes on from its own last.pt "
                         "(which records the checkpoint it started from); leave --init out")
    if args.starts is not None and args.starts > 1:
        raise UsageError(f"--starts {args.starts} with --init: random starts re-initialise the "
                         "heads that --init keeps; a run from --init has one start")
    arch = init_architecture(args.init)
    variant = args.variant or "asen"
    name = args.config or arch.name.removesuffix("-agnostic")
    if args.config is None and name not in TRAIN_CONFIGS:
        raise UsageError(f"--init {args.init}: its architecture {arch.name!r} names no recipe "
                         f"({', '.join(TRAIN_CONFIGS)}); pass --config with the same network")
    cfg = _override(_named_config(name), args)
    if diff := architecture_differences(model_config_for(cfg, variant), arch):
        raise UsageError(f"--init {args.init} is a {arch.name!r} network; --config {name} "
                         f"--variant {variant} builds another (it differs in {', '.join(diff)}); "
                         "leave --config out to use the checkpoint's own, or pass a recipe "
                         "with the same network")
    return cfg, variant


def _named_config(name: str) -> TrainConfig:
    try:
        return get_train_config(name)
    except (OSError, ValueError, TypeError, KeyError) as exc:   # bad name, file or fields
        raise UsageError(f"--config: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, variant = config_from_args(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:      # --resume of a file that cannot resume a run
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.config is None:
        log.info("--config: %s", "the resumed run's own" if args.resume is not None
                 else f"{cfg.model} (the architecture of {args.init})" if args.init is not None
                 else f"{cfg.model} (the default on {pick_device(args.device).type})")
    try:
        best = run(args.data, args.out, cfg, variant, args.resume, args.device,
                   trunk_cache_dir=args.trunk_cache, init=args.init)
    except (CheckpointError, DataError) as exc:     # a bad checkpoint or dataset folder
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"best checkpoint: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
