"""Where the attention peak lands when it misses the region's box (docs/RESULTS.md).

    python scripts/attention_offsets.py --checkpoint model/weights/demo.pt --data data/synth \\
        --attribute hem_length

For every test query of the attribute: the global attention peak, mapped to the original
image, and its vertical and horizontal distance to the ground-truth box, in attention cells
(0 inside the box; positive below / right of it). Prints the share inside the box and the
sorted vertical offsets of the misses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from model import load_model
from model.training.data import load_split, read_attributes
from model.training.evaluate import attention_maps, read_boxes
from model.training.metrics import attention_peak, crop_point_to_original


def _offset(value: float, low: float, high: float) -> float:
    return 0.0 if low <= value <= high else (value - high if value > high else value - low)


def offsets(checkpoint: Path, data: Path, attribute: str) -> np.ndarray:
    """[n, 3]: dx, dy (cells) of the peak from the box, and the box height in cells."""
    emb = load_model(checkpoint, device="cpu")
    names = [a.name for a in read_attributes(data)]
    split = load_split(data, "test")
    boxes = read_boxes(data, "test")
    ids = [i for i, a, _ in split.queries if names[a] == attribute and attribute in boxes[i]]
    stream = attention_maps(emb, [split.image_paths[i] for i in ids], [attribute] * len(ids),
                            32, 1)
    rows = []
    for i, (att, size, crop) in zip(ids, stream, strict=True):
        x, y = crop_point_to_original(*attention_peak(att), size, crop)
        x0, y0, x1, y1 = boxes[i][attribute]
        cell = (crop[3] - crop[1]) / att.shape[0]
        rows.append((_offset(x, x0, x1) / cell, _offset(y, y0, y1) / cell, (y1 - y0) / cell))
    return np.array(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--attribute", required=True)
    args = p.parse_args(argv)
    r = offsets(args.checkpoint, args.data, args.attribute)
    if not len(r):
        print(f"no test query of {args.attribute!r} has a box", file=sys.stderr)
        return 1
    inside = (r[:, 0] == 0) & (r[:, 1] == 0)
    dy = np.sort(r[~inside, 1])
    print(f"{args.attribute}: {len(r)} queries, peak in box {100 * inside.mean():.1f}%, "
          f"box height {np.median(r[:, 2]):.2f} cells (median)")
    print(f"misses: {len(dy)}; 0 to 3 cells below the box: {int(((dy >= 0) & (dy <= 3)).sum())}; "
          f"above it: {int((dy < 0).sum())}")
    print("vertical offsets of the misses (cells):", " ".join(f"{v:.2f}" for v in dy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
