"""Bisecting the button (docs/RESULTS.md): the ablation script's training loop run on the very
model `model.train` builds (the `cpu` config, its seed, its own centring module).

    python scripts/loop_ab.py --data data/synth --features data/feats8 [--trunk-cache FILE]

Two epochs of stage 1 with loss sampling, scored on the test split after each (as
`scripts/ablation_stage1.py train` prints). ``--trunk-cache`` takes the exact float32 trunk
outputs of a `model.train --trunk-cache` folder instead of the float16 features.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from ablation_stage1 import Centring, sample_epoch, score  # noqa: E402

from model.data import TripletSampler, load_split, read_attributes  # noqa: E402
from model.embedder import pick_device  # noqa: E402
from model.train import TRAIN_CONFIGS, _setup  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True, help="ablation_stage1 features")
    p.add_argument("--trunk-cache", type=Path, help="a trunk-<hash>.pt of model.train")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    cfg = TRAIN_CONFIGS["cpu"]
    net = _setup(args.data, cfg, "asen", pick_device("cpu"), None).net
    head = net.choices["global"]
    names = [a.name for a in read_attributes(args.data)]
    if args.trunk_cache:
        cache = torch.load(args.trunk_cache, weights_only=True)
        feats = torch.stack([cache[i].contiguous() for i in range(len(cache))])
    else:
        feats = torch.load(args.features / "train.pt")["feats"].float()
    test_feats = torch.load(args.features / "test.pt")
    sampler = TripletSampler(load_split(args.data, "train").labels, len(names))
    test = load_split(args.data, "test")
    head.basenet.requires_grad_(False)
    opt = torch.optim.Adam([q for n, q in head.named_parameters()
                            if not n.startswith("basenet")], lr=cfg.stage1.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.stage1.step, cfg.stage1.gamma)
    attr_loss = np.full(len(names), cfg.margin)
    no_centring = Centring(len(names), False)     # the model centres its own embeddings
    net.train()
    head.basenet.eval()
    t0 = time.time()
    for epoch in range(args.epochs):
        rng = np.random.default_rng([cfg.seed, 1, epoch])
        triplets = sample_epoch(sampler, cfg.triplets_per_epoch, len(names), attr_loss, "loss",
                                rng)
        total, count = np.zeros(len(names)), np.zeros(len(names))
        for s in range(0, len(triplets), cfg.batch_size):
            b = torch.from_numpy(triplets[s:s + cfg.batch_size])
            g, _ = net.global_head(feats[torch.cat([b[:, 0], b[:, 1], b[:, 2]])], b[:, 3].repeat(3))
            x, pos, neg = g.split(len(b))
            losses = F.relu(cfg.margin - F.cosine_similarity(x, pos)
                            + F.cosine_similarity(x, neg))
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
            np.add.at(total, b[:, 3].numpy(), losses.detach().numpy())
            np.add.at(count, b[:, 3].numpy(), 1)
        sched.step()
        attr_loss = 0.5 * attr_loss + 0.5 * total / np.maximum(count, 1)
        print(f"epoch {epoch + 1} {score(net, no_centring, args.data, test, test_feats, names)} "
              f"{time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
