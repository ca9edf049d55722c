"""Bisecting the button (docs/RESULTS.md): the ablation script's training loop run on the very
model `model.train` builds (the `cpu` config, its seed, its own centring module).

    python scripts/loop_ab.py --data data/synth --features data/feats8 [--trunk-cache FILE]

Two epochs of stage 1 with loss sampling, scored on the test split after each (as
`scripts/ablation_stage1.py train` prints). ``--trunk-cache`` takes the exact float32 trunk
outputs of a `model.train --trunk-cache` folder instead of the float16 features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from ablation_stage1 import Centring, fit

from model.config import TRAIN_CONFIGS
from model.embedder import pick_device
from model.training.data import read_attributes
from model.training.train import setup_training


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True, help="ablation_stage1 features")
    p.add_argument("--trunk-cache", type=Path, help="a trunk-<hash>.pt of model.train")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    cfg = TRAIN_CONFIGS["cpu"]       # the script's loop uses the same lr, schedule, batch, margin
    net = setup_training(args.data, cfg, "asen", pick_device("cpu"), None).net
    if args.trunk_cache:
        cache = torch.load(args.trunk_cache, weights_only=True)
        feats = torch.stack([cache[i].contiguous() for i in range(len(cache))])
    else:
        feats = torch.load(args.features / "train.pt")["feats"].float()
    no_centring = Centring(len(read_attributes(args.data)), False)  # the model centres itself
    fit(net, no_centring, args.data, feats, args.features, args.epochs, cfg.stage1.lr, "loss",
        cfg.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
