"""Stage-1 ablation of the `cpu` recipe on frozen-trunk features (docs/RESULTS.md).

    python scripts/ablation_stage1.py features --data data/synth --out data/feats-os16 \\
        --backbone mobilenet_v2
    python scripts/ablation_stage1.py train --data data/synth --features data/feats-os16 \\
        --backbone mobilenet_v2 --epochs 4 [--center] [--sampling loss] [--temperature T]

The global branch alone is trained on cached outputs of the frozen ImageNet MobileNetV2
trunk (computed once per backbone by ``features``), as ``model.train`` does in stage 1, and
after every epoch it is scored on the whole test split: MAP per attribute (the global
embedding), attention localisation (peak in the region's box) and the mean cosine between
different images' embeddings of each attribute (near 1: the attribute collapsed to one
vector). Scoring every epoch on cached test features is what makes this quicker than full
``model.train`` runs; the switches are the ones the recipe adds (``--center``: per-attribute
centring, ``--sampling loss``: loss-weighted attribute sampling) plus the attention
temperature that did not help.
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import build_model
from model.config import get_config
from model.imageio import open_image
from model.preprocess import Preprocessor
from model.roi import CropGeometry
from model.training.data import TripletSampler, load_split, read_attributes
from model.training.evaluate import read_boxes
from model.training.metrics import mean_average_precision, peak_in_box


def global_net(attrs, backbone: str, weights: str | None = None):
    cfg = get_config("cpu").global_only()
    cfg = replace(cfg, center_embeddings=False,
                  global_branch=replace(cfg.global_branch, backbone=backbone))
    return build_model(cfg, attrs, backbone_weights=weights)


def features(args: argparse.Namespace) -> None:
    """Trunk outputs (float16) and image sizes of the train and test splits."""
    attrs = read_attributes(args.data)
    net = global_net(attrs, args.backbone, "imagenet").eval()
    net = net.to(memory_format=torch.channels_last)
    pre = Preprocessor(224)
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        paths = load_split(args.data, split).image_paths
        feats, sizes = [], []
        with ThreadPoolExecutor(4) as pool:
            for s in range(0, len(paths), 64):
                preps = list(pool.map(lambda p: pre(open_image(p)), paths[s:s + 64]))
                x = torch.stack([p.pixels for p in preps])
                with torch.no_grad():
                    out = net.trunk(x.contiguous(memory_format=torch.channels_last))
                feats.append(out.half().contiguous())
                sizes += [(p.geometry.width, p.geometry.height) for p in preps]
        torch.save({"feats": torch.cat(feats), "sizes": sizes}, args.out / f"{split}.pt")
        print(split, len(paths), "images", flush=True)


class Centring:
    """Per-attribute centring: batch means in training, a running mean (0.01) at test."""

    def __init__(self, n_attrs: int, enabled: bool):
        self.enabled, self.n_attrs, self.mean = enabled, n_attrs, None

    def __call__(self, g: torch.Tensor, attr: torch.Tensor, train: bool) -> torch.Tensor:
        if not self.enabled:
            return g
        if self.mean is None:
            self.mean = torch.zeros(self.n_attrs, g.shape[1])
        if not train:
            return g - self.mean[attr]
        out = g.clone()
        for t in attr.unique().tolist():
            rows = attr == t
            mu = g[rows].mean(0)
            out[rows] = g[rows] - mu
            self.mean[t] = 0.99 * self.mean[t] + 0.01 * mu.detach()
        return out


def scaled_attention(attnnet, temperature: float):
    """ASA with its logits multiplied by ``temperature``."""
    def spatial_attention(feat: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        img = torch.tanh(attnnet.conv(feat)).flatten(2)
        key = torch.tanh(attnnet.attr_transform1(attr))
        scores = torch.einsum("bc,bcn->bn", key, img) / math.sqrt(img.shape[1]) * temperature
        return F.softmax(scores, dim=1).view(b, h, w)
    return spatial_attention


def sample_epoch(sampler: TripletSampler, n: int, n_attrs: int, attr_loss: np.ndarray,
                 sampling: str, rng: np.random.Generator) -> np.ndarray:
    if sampling == "uniform":
        return sampler.sample(n, rng)
    chosen = rng.choice(n_attrs, size=n, p=attr_loss / attr_loss.sum())
    parts = []
    for t in range(n_attrs):
        k = int((chosen == t).sum())
        if k:
            s = sampler.sample(k * n_attrs * 2, rng)
            parts.append(s[s[:, 3] == t][:k])
    out = np.concatenate(parts)
    rng.shuffle(out)
    return out


def epoch_triplets(sampler: TripletSampler, n_attrs: int, attr_loss: np.ndarray,
                   sampling: str, seed: int, epoch: int) -> np.ndarray:
    """This script's draw of one epoch's 10,000 triplets (its own generator per epoch)."""
    rng = np.random.default_rng([seed, 1, epoch])
    return sample_epoch(sampler, 10_000, n_attrs, attr_loss, sampling, rng)


@torch.no_grad()
def score(net, centre: Centring, root: Path, test, feats: dict, names: list[str]) -> str:
    net.eval()
    q, c = test.queries, test.candidates
    pairs = sorted({(i, t) for i, t, _ in q + c})
    row = {pair: k for k, pair in enumerate(pairs)}
    ids = torch.tensor([i for i, _ in pairs])
    at = torch.tensor([t for _, t in pairs])
    embs, maps = [], []
    for s in range(0, len(pairs), 256):
        g, m = net.global_head(feats["feats"][ids[s:s + 256]].float(), at[s:s + 256])
        embs.append(F.normalize(centre(g, at[s:s + 256], False), dim=1))
        maps.append(m)
    emb, att = torch.cat(embs).numpy(), torch.cat(maps).numpy()

    def side(triples):
        idx = np.array([row[(i, t)] for i, t, _ in triples])
        return emb[idx], np.array([x[1] for x in triples]), np.array([x[2] for x in triples])

    res = mean_average_precision(*side(q), *side(c), attr_names=names)
    boxes = read_boxes(root, "test")
    hits: dict[str, int] = {}
    count: dict[str, int] = {}
    for i, t, _ in q:
        box = boxes[i].get(names[t])
        if box is None:
            continue
        w, h = feats["sizes"][i]
        inside = peak_in_box(att[row[(i, t)]], (w, h), box, CropGeometry(w, h, 224).crop_box())
        hits[names[t]] = hits.get(names[t], 0) + int(inside)
        count[names[t]] = count.get(names[t], 0) + 1
    collapse = {}
    for t, name in enumerate(names):
        e = emb[[row[(i, tt)] for i, tt, _ in q if tt == t]]
        collapse[name] = float(((e @ e.T).sum() - len(e)) / (len(e) * (len(e) - 1)))
    net.train()
    net.choices["global"].basenet.eval()
    return (f"MAP {res.overall:.1f} "
            + " ".join(f"{k}={v:.1f}" for k, v in res.per_attribute.items())
            + " | loc " + " ".join(f"{k}={100 * hits[k] / count[k]:.0f}" for k in count)
            + " | collapse " + " ".join(f"{k}={v:.2f}" for k, v in collapse.items()))


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    root = args.data
    attrs = read_attributes(root)
    net = global_net(attrs, args.backbone)
    head = net.choices["global"]
    if args.temperature != 1.0:
        head.attnnet.spatial_attention = scaled_attention(head.attnnet, args.temperature)
    train_feats = torch.load(args.features / "train.pt")["feats"].float()
    fit(net, Centring(len(attrs), args.center), root, train_feats, args.features, args.epochs,
        args.lr, args.sampling, args.seed)


def fit(net, centre: Centring, root: Path, train_feats: torch.Tensor, features: Path,
        epochs: int, lr: float, sampling: str, seed: int) -> None:
    """Train the global head on ``train_feats`` (trunk outputs by image id) and print the test
    score after every epoch; ``centre`` centres the embeddings unless the model does."""
    names = [x.name for x in read_attributes(root)]
    n_attrs = len(names)
    head = net.choices["global"]
    test_feats = torch.load(features / "test.pt")
    sampler = TripletSampler(load_split(root, "train").labels, n_attrs)
    test = load_split(root, "test")
    head.basenet.requires_grad_(False)
    params = [p for n, p in head.named_parameters() if not n.startswith("basenet")]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.8)
    attr_loss = np.full(n_attrs, 0.2)
    t0 = time.time()
    net.train()
    head.basenet.eval()
    for epoch in range(epochs):
        triplets = epoch_triplets(sampler, n_attrs, attr_loss, sampling, seed, epoch)
        loss_sum, loss_n = np.zeros(n_attrs), np.zeros(n_attrs)
        for s in range(0, len(triplets), 32):
            b = torch.from_numpy(triplets[s:s + 32])
            ids = torch.cat([b[:, 0], b[:, 1], b[:, 2]])
            at = b[:, 3].repeat(3)
            g, _ = net.global_head(train_feats[ids], at)
            x, p, n = centre(g, at, True).split(len(b))
            losses = F.relu(0.2 - F.cosine_similarity(x, p) + F.cosine_similarity(x, n))
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
            np.add.at(loss_sum, b[:, 3].numpy(), losses.detach().numpy())
            np.add.at(loss_n, b[:, 3].numpy(), 1)
        sched.step()
        attr_loss = 0.5 * attr_loss + 0.5 * loss_sum / np.maximum(loss_n, 1)
        print(f"epoch {epoch + 1} {score(net, centre, root, test, test_feats, names)} "
              f"{time.time() - t0:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features")
    f.add_argument("--data", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--backbone", default="mobilenet_v2")
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--features", type=Path, required=True)
    t.add_argument("--backbone", default="mobilenet_v2")
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--center", action="store_true")
    t.add_argument("--sampling", choices=["uniform", "loss"], default="uniform")
    t.add_argument("--temperature", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    features(args) if args.command == "features" else train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
