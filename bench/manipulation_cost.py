"""What a "like this, but with" query costs against the equivalent composed query.

    python bench/manipulation_cost.py [--index demo-data/index] [--rounds 60] [--json OUT]

A manipulated query (``but_with`` on POST /v1/search or /v1/search/by-item) ranks by every
attribute: for the kept ones (weight 1) the query's own embedding mixed with its value's
prototype (DEFAULT_KEEP_MIX), for the set ones the target value's prototype (weight
DEFAULT_TARGET_WEIGHT). The composed query of the same cost and weights is
POST /v1/search/compose with those references: the upload (or the item) for each kept
attribute and a value reference for each target. Both embed the upload once, for the kept
attributes only, and rank with one weighted search; this measures it. One server
(``python -m service``) answers both, in interleaved rounds (so both see the same machine
load; each round starts one request later), by upload and by item; the script prints the
median latencies (client wall time, the service's ``timings.total_ms`` and its
``search_ms``, the ranking) and the ratio manipulated / composed.

Without --index it builds a synthetic catalog of --n-items test images and indexes it with
the demo checkpoint (model/weights/demo.pt) in a temporary folder. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from benchkit import ServerProcess, run_indexer

from model.manipulation import DEFAULT_TARGET_WEIGHT

REPO = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = REPO / "model" / "weights" / "demo.pt"


@dataclass
class Timing:
    """Median latencies of one kind of request (milliseconds)."""

    name: str
    requests: int
    client_p50_ms: float
    server_p50_ms: float
    search_p50_ms: float


def build_index(out: Path, n_items: int, checkpoint: Path) -> Path:
    """A synthetic catalog (model.synth, test split only) and its index under ``out``."""
    data = out / "catalog"
    subprocess.run([sys.executable, "-m", "model.synth", "--out", str(data), "--seed", "0",
                    "--n-train", "0", "--n-valid", "0", "--n-test", str(n_items)],
                   check=True, capture_output=True)
    run_indexer(data / "catalog.csv", checkpoint, out / "index")
    return out / "index"


def requests_for(client: httpx.Client, target: tuple[str, str], item_id: str,
                 image: bytes) -> dict[str, dict]:
    """The four requests (httpx keyword arguments): manipulated and composed, by upload and
    by item."""
    attributes = [a["name"] for a in client.get("/v1/attributes").json()["attributes"]]
    attribute, value = target
    kept = [a for a in attributes if a != attribute]
    values = [{"attribute": attribute, "weight": DEFAULT_TARGET_WEIGHT, "value": value}]
    upload_refs = [{"attribute": a, "weight": 1.0, "image": 0} for a in kept] + values
    item_refs = [{"attribute": a, "weight": 1.0, "item_id": item_id} for a in kept] + values
    files = [("images", ("q.jpg", image, "image/jpeg"))]
    return {
        "upload_but_with": {"url": "/v1/search", "files": {"image": ("q.jpg", image)},
                            "data": {"but_with": json.dumps({attribute: value}), "k": "10"}},
        "upload_composed": {"url": "/v1/search/compose", "files": files,
                            "data": {"references": json.dumps(upload_refs), "k": "10"}},
        "item_but_with": {"url": "/v1/search/by-item", "json": {
            "item_id": item_id, "but_with": {attribute: value}, "k": 10, "include_self": True}},
        "item_composed": {"url": "/v1/search/compose",
                          "data": {"references": json.dumps(item_refs), "k": "10"}},
    }


def measure(client: httpx.Client, requests: dict[str, dict], rounds: int) -> list[Timing]:
    """Interleaved rounds of every request (after two warm-up rounds), each round starting
    one request later (so that none always follows the same one); medians."""
    names = list(requests)
    wall: dict[str, list[float]] = {name: [] for name in names}
    server: dict[str, list[list[float]]] = {name: [] for name in names}
    for n in range(rounds + 2):
        for name in names[n % len(names):] + names[:n % len(names)]:
            t = time.perf_counter()
            r = client.post(**requests[name])
            elapsed = (time.perf_counter() - t) * 1000.0
            r.raise_for_status()
            if n >= 2:
                timings = r.json()["timings"]
                wall[name].append(elapsed)
                server[name].append([timings["total_ms"], timings["search_ms"]])
    return [Timing(name, len(wall[name]), statistics.median(wall[name]),
                   statistics.median(s for s, _ in server[name]),
                   statistics.median(s for _, s in server[name])) for name in names]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", type=Path, help="INDEX_DIR to serve (default: build one)")
    ap.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT,
                    help="checkpoint of the index built without --index")
    ap.add_argument("--n-items", type=int, default=200, help="catalog size without --index")
    ap.add_argument("--target", default="neckline=v", help="ATTRIBUTE=VALUE to set")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--json", type=Path, help="write the timings here too")
    args = ap.parse_args(argv)
    attribute, _, value = args.target.partition("=")
    with tempfile.TemporaryDirectory(prefix="asen-manip-") as tmp:
        index = args.index or build_index(Path(tmp), args.n_items, args.checkpoint)
        with ServerProcess({"ASEN_INDEX_DIR": str(index), "ASEN_RELOAD_INTERVAL_S": "0"}) as srv:
            srv.wait()
            with httpx.Client(base_url=srv.url, timeout=60.0) as client:
                first = client.get("/v1/items", params={"limit": 1}).json()["items"][0]
                image = client.get(first["image_url"]).content
                timings = measure(client, requests_for(client, (attribute, value),
                                                       first["id"], image), args.rounds)
    by = {t.name: t for t in timings}
    print(f"{'request':<18} {'n':>4} {'client p50 ms':>14} {'server p50 ms':>14} "
          f"{'search p50 ms':>14}")
    for t in timings:
        print(f"{t.name:<18} {t.requests:>4} {t.client_p50_ms:>14.2f} {t.server_p50_ms:>14.2f} "
              f"{t.search_p50_ms:>14.2f}")
    ratios = {kind: by[f"{kind}_but_with"].client_p50_ms / by[f"{kind}_composed"].client_p50_ms
              for kind in ("upload", "item")}
    search = {kind: by[f"{kind}_but_with"].search_p50_ms / by[f"{kind}_composed"].search_p50_ms
              for kind in ("upload", "item")}
    for kind, ratio in ratios.items():
        print(f"{kind}: manipulated / composed (client p50) = {ratio:.3f}, "
              f"search p50 {search[kind]:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"timings": [asdict(t) for t in timings],
                                         "ratios": ratios, "search_ratios": search}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
