"""Bisecting the button (docs/RESULTS.md): `model.train`'s own stage-1 loop, with only the
stream of triplets swapped.

    python scripts/triplet_stream_ab.py --data data/synth --features data/feats8 \\
        --trunk-cache runs/trunk-cache --triplets train      # model.train's own draw (seed 0)
    ... --triplets train --triplet-seed 1                     # the same sampler, another draw
    ... --triplets ablation                                   # scripts/ablation_stage1.py's draw

The model, its initialisation (the `cpu` config's seed), the forward through the trunk cache,
the loss, the optimiser and the schedule are `model.train`'s own in every run; only the list
of triplets each epoch trains on differs. Prints the test split's score after each epoch as
`scripts/ablation_stage1.py train` does (MAP, localisation, collapse), from the features of
`ablation_stage1.py features --backbone mobilenet_v2_os8`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ablation_stage1 import Centring, epoch_triplets, score

import model.training.train as mt
from model.config import TRAIN_CONFIGS, TrainConfig
from model.embedder import pick_device
from model.training.data import load_split, read_attributes


def ablation_triplets(n_attrs: int, seed: int):
    """The ablation script's draw (loss-weighted attributes), fed model.train's running loss."""
    def draw(setup: mt.TrainingSetup, cfg: TrainConfig, state: mt.RunState, stage: int):
        loss = (np.full(n_attrs, cfg.margin) if state.attr_loss is None
                else np.asarray(state.attr_loss))
        return epoch_triplets(setup.sampler, n_attrs, loss, "loss", seed, state.epoch).tolist()
    return draw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True, help="ablation_stage1 features")
    p.add_argument("--trunk-cache", type=Path, help="model.train's --trunk-cache folder")
    p.add_argument("--triplets", choices=["train", "ablation"], default="train")
    p.add_argument("--triplet-seed", type=int, default=0,
                   help="seed of the triplet draw (train: 0 is the run's own)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TRAIN_CONFIGS["cpu"]
    cfg = replace(cfg, starts=1, stage1=replace(cfg.stage1, epochs=args.epochs))
    names = [a.name for a in read_attributes(args.data)]
    if args.triplets == "ablation":
        mt.epoch_triplets = ablation_triplets(len(names), args.triplet_seed)
    elif args.triplet_seed:
        own = mt.epoch_triplets
        mt.epoch_triplets = lambda s, c, st, sg: own(s, replace(c, seed=args.triplet_seed),
                                                     st, sg)
    setup = mt.setup_training(args.data, cfg, "asen", pick_device("cpu"), args.trunk_cache)
    test = load_split(args.data, "test")
    test_feats = torch.load(args.features / "test.pt")
    state = mt.RunState()
    mt.set_train_mode(setup.net, True)   # frozen trunks: the optimiser gets the heads only
    opt, sched = mt.make_optimizer(setup.net, 1, cfg.stage1)
    t0 = time.time()
    for _ in range(args.epochs):
        mt.set_train_mode(setup.net, True)
        loss, attr_loss = mt.train_epoch(setup, cfg, state, 1, args.epochs, opt)
        sched.step()
        mt.update_attr_loss(state, cfg, attr_loss)
        state.epoch += 1
        result = score(setup.net, Centring(len(names), False), args.data, test, test_feats,
                       names)
        print(f"epoch {state.epoch} loss {loss:.4f} {result} {time.time() - t0:.0f}s",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
