#!/usr/bin/env python3
"""One prepared device check: every CUDA path of the project, one PASS/FAIL table.

    python scripts/gpu_check.py --out gpu_check.md [--workdir DIR] [--n-items 256]
                                [--bench-images 256] [--bench-batch-size 0 512]

Rows (each check runs even when an earlier one failed):

- environment: torch, CUDA, the GPU, FAISS GPUs;
- the demo checkpoint (``model/weights/demo.pt``, ``cpu`` config) and the ``paper``
  configuration (random weights, FashionAI attributes) on CUDA in fp32, fp16 and bf16:
  ``embed``, ``embed_all`` and ``explain``, cosine to the CPU fp32 embedding >= 0.999;
- the indexer, ``python -m indexer --device cuda`` on a small synthetic catalog, flat and
  IVF-PQ (coarse k-means on the GPU), and the CUDA vectors against CPU ones;
- the service, ``python -m service`` with ``ASEN_DEVICE=cuda`` on a free localhost port:
  /readyz, one search and one explain over HTTP;
- ``bench/embed.py`` (paper config, 8 attributes): catalog images/s in fp16 and bf16, goal
  >= 2,000 on one H100.

Writes the table to ``--out`` (markdown, or JSON for a ``.json`` name) and the other format
beside it. Exit codes: 0 every check passed, 1 some check failed, 2 no CUDA GPU (nothing is
checked) or a usage error. Needs no network: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DEMO_CHECKPOINT = REPO / "model" / "weights" / "demo.pt"
PRECISIONS = ("fp32", "fp16", "bf16")
MIN_COSINE = 0.999      # to the CPU fp32 embedding, every precision (--min-cosine)
BENCH_GOAL = 2000.0      # catalog images/s, 8 attributes, paper config, one H100
N_IMAGES = 8             # images per model check
DEVICE = "cuda"          # "cpu" only for --dry-run-on-cpu (tests the script, not CUDA)


# -- the table ------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the table: ``ok`` None means informational (no pass criterion)."""

    name: str
    ok: bool | None
    numbers: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "INFO" if self.ok is None else ("PASS" if self.ok else "FAIL")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class Report:
    """Rows in order; ``run`` turns an exception into a FAIL row and goes on."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, name: str, ok: bool | None, **numbers: object) -> None:
        row = Row(name, ok, numbers)
        self.rows.append(row)
        cells = ", ".join(f"{k}={_fmt(v)}" for k, v in numbers.items())
        print(f"[gpu_check] {row.status:4}  {name}  {cells}", flush=True)

    def run(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one broken path must not hide the others
            traceback.print_exc()
            self.add(name, False, error=f"{type(exc).__name__}: {str(exc)[:300]}")

    @property
    def passed(self) -> bool:
        return all(r.ok is not False for r in self.rows)

    def markdown(self) -> str:
        lines = ["| check | status | numbers |", "|---|---|---|"]
        for r in self.rows:
            cells = ", ".join(f"{k}={_fmt(v)}" for k, v in r.numbers.items())
            lines.append(f"| {r.name} | {r.status} | {cells.replace('|', '/')} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        return json.dumps([{"name": r.name, "status": r.status, "numbers": r.numbers}
                           for r in self.rows], indent=1, default=str)

    def write(self, out: Path) -> list[Path]:
        """Write ``out`` in its suffix's format (.json or markdown) and the other beside it."""
        out.parent.mkdir(parents=True, exist_ok=True)
        md, js = (out.with_suffix(".md"), out) if out.suffix == ".json" else (
            out, out.with_suffix(".json"))
        md.write_text(self.markdown())
        js.write_text(self.to_json())
        return [out, js if out == md else md]


# -- helpers --------------------------------------------------------------------------------

def cosines(a, b):
    """Row-wise cosine of two arrays [..., D] (embeddings are unit-norm already)."""
    import numpy as np

    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                       1e-12)


def run_cli(argv: list[str], timeout: float, log: Path) -> subprocess.CompletedProcess:
    """Run one of the project's command lines with this interpreter; output to ``log``."""
    with open(log, "w") as fh:
        res = subprocess.run([sys.executable, *argv], cwd=REPO, stdout=fh,
                             stderr=subprocess.STDOUT, timeout=timeout, text=True)
    if res.returncode != 0:
        tail = log.read_text()[-1500:]
        raise RuntimeError(f"`python {' '.join(argv)}` exited {res.returncode}: ...{tail}")
    return res


def catalog_rows(catalog: Path) -> list[dict]:
    import csv

    with open(catalog, newline="") as fh:
        return list(csv.DictReader(fh))


# -- checks ---------------------------------------------------------------------------------

def precisions() -> tuple[str, ...]:
    return PRECISIONS if DEVICE == "cuda" else ("fp32", "bf16")   # no fp16 on the CPU


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def check_environment(report: Report) -> None:
    import faiss
    import torch

    if DEVICE != "cuda":
        report.add("environment (dry run on the CPU)", None, torch=torch.__version__,
                   faiss=faiss.__version__, faiss_gpus=faiss.get_num_gpus())
        return
    props = torch.cuda.get_device_properties(0)
    report.add("environment", faiss.get_num_gpus() > 0, gpu=props.name,
               memory_gib=round(props.total_memory / 2**30, 1),
               capability=f"{props.major}.{props.minor}", torch=torch.__version__,
               cuda=torch.version.cuda, faiss=faiss.__version__,
               faiss_gpus=faiss.get_num_gpus())


def make_catalog(work: Path, n_items: int) -> tuple[Path, float]:
    """A synthetic catalog of ``n_items`` test images (``python -m model.synth``)."""
    out = work / "catalog"
    t0 = time.perf_counter()
    run_cli(["-m", "model.synth", "--out", str(out), "--seed", "0", "--n-train", "0",
             "--n-valid", "0", "--n-test", str(n_items), "--size", "256"], 300,
            work / "synth.log")
    return out / "catalog.csv", time.perf_counter() - t0


def load_images(catalog: Path | None, n: int) -> list:
    """The first ``n`` catalog images, or structured random ones without a catalog."""
    import numpy as np
    from PIL import Image

    if catalog is not None:
        rows = catalog_rows(catalog)[:n]
        return [Image.open(catalog.parent / r["image"]).convert("RGB") for r in rows]
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (320, 256, 3), dtype=np.uint8))
            for _ in range(n)]


def compare_embedders(report: Report, label: str, ref, emb, images: list) -> None:
    """``embed``, ``embed_all`` and ``explain`` of a CUDA embedder against the CPU fp32 one."""
    import numpy as np

    names = emb.attribute_names
    attrs = [names[i % len(names)] for i in range(len(images))]
    tag = f"{label} {emb.precision}"

    def one_by_one() -> None:
        cos = cosines(ref.embed(images, attrs), emb.embed(images, attrs))
        report.add(f"{tag} embed", bool(np.isfinite(cos).all() and cos.min() >= MIN_COSINE),
                   cos_min=float(cos.min()), cos_mean=float(cos.mean()), rows=len(cos))

    def every_attribute() -> None:
        sync()
        t0 = time.perf_counter()
        got = emb.embed_all(images)
        sync()
        seconds = time.perf_counter() - t0
        cos = cosines(ref.embed_all(images), got)
        report.add(f"{tag} embed_all", bool(np.isfinite(cos).all() and cos.min() >= MIN_COSINE),
                   cos_min=float(cos.min()), cos_mean=float(cos.mean()), rows=len(cos),
                   ms=round(seconds * 1e3, 1))

    def explain() -> None:
        worst, box_px, attn_diff = 1.0, 0, 0.0
        for img, a in zip(images, attrs, strict=True):
            want, got = ref.explain(img, a), emb.explain(img, a)
            worst = min(worst, float(cosines(want.embedding[None], got.embedding[None])[0]))
            attn_diff = max(attn_diff, float(np.abs(want.attention - got.attention).max()))
            if (want.box is None) != (got.box is None):
                raise AssertionError("one explanation has a box, the other none")
            if want.box is not None:
                box_px = max(box_px, max(abs(p - q) for p, q in zip(want.box, got.box,
                                                                    strict=True)))
        report.add(f"{tag} explain", worst >= MIN_COSINE, cos_min=worst,
                   attention_max_abs_diff=attn_diff, box_max_px_diff=box_px)

    for name, fn in (("embed", one_by_one), ("embed_all", every_attribute),
                     ("explain", explain)):
        report.run(f"{tag} {name}", fn)


def check_model(report: Report, label: str, make: Callable[[str, str], object],
                images: list) -> None:
    """CPU fp32 reference, then CUDA in every precision; ``make(device, precision)``."""
    import torch

    ref = make("cpu", "fp32")
    for precision in precisions():
        def one(precision: str = precision) -> None:
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            emb = make(DEVICE, precision)
            report.add(f"{label} {precision} load", emb.device.type == DEVICE,
                       seconds=round(time.perf_counter() - t0, 2), dim=emb.dim,
                       tf32_convs=torch.backends.cudnn.allow_tf32)
            compare_embedders(report, label, ref, emb, images)
            if DEVICE == "cuda":
                report.add(f"{label} {precision} memory", None,
                           peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3))
        report.run(f"{label} {precision}", one)


def demo_maker(device: str, precision: str):
    from model import load_model

    return load_model(DEMO_CHECKPOINT, device=device, precision=precision)


def paper_maker() -> Callable[[str, str], object]:
    """Embedders of one random-weight paper-config network (FashionAI attributes)."""
    import torch

    from model import build_model
    from model.embedder import Embedder, use_ieee_fp32

    torch.manual_seed(0)
    net = build_model("paper", "FashionAI")

    def make(device: str, precision: str):
        emb = Embedder(copy.deepcopy(net), device=device, precision=precision, fuse=True)
        use_ieee_fp32(emb.device, precision)   # as load_model serves fp32 on CUDA
        return emb
    return make


def index_catalog(work: Path, catalog: Path, name: str, extra: list[str]) -> tuple[Path, str]:
    """``python -m indexer --device cuda``; the index folder and the job's log."""
    out = work / name
    log = work / f"{name}.log"
    run_cli(["-m", "indexer", "--catalog", str(catalog), "--checkpoint", str(DEMO_CHECKPOINT),
             "--out", str(out), "--device", DEVICE, "--no-progress", *extra], 420, log)
    return out, log.read_text()


def check_flat_index(report: Report, work: Path, catalog: Path, n_items: int) -> Path:
    import numpy as np

    from indexer.reader import CatalogIndex
    from model import load_model

    out, _ = index_catalog(work, catalog, "index-flat", [])
    idx = CatalogIndex.open(out)
    try:
        m = idx.manifest
        b = m.build
        ok = (b["device"].startswith(DEVICE) and m.rejected == 0 and m.catalog.items == n_items)
        report.add(f"indexer flat ({DEVICE})", ok, items=m.catalog.items,
                   rejected=m.rejected, images_per_s=b["images_per_s"],
                   seconds=b["seconds"], device=b["device"])
        rows = catalog_rows(catalog)[:N_IMAGES]
        ref = load_model(DEMO_CHECKPOINT, device="cpu").embed_all(
            load_images(catalog, N_IMAGES))
        got = np.stack([[idx.embedding(r["id"], a) for a in idx.attributes] for r in rows])
        cos = cosines(ref, got)
        report.add(f"indexer {DEVICE} vectors vs cpu", bool(cos.min() >= MIN_COSINE),
                   cos_min=float(cos.min()), rows=len(cos))
    finally:
        idx.close()
    return out


def check_gpu_kmeans(report: Report, flat: Path) -> None:
    """IVF-PQ training with the coarse k-means on the GPU, in process."""
    import faiss

    from indexer.build import faiss_index as fx
    from indexer.reader import CatalogIndex

    idx = CatalogIndex.open(flat)
    try:
        attr = idx.attributes[0]
        vecs = fx.extract(faiss.read_index(str(flat / f"{attr}.faiss")))[1]
    finally:
        idx.close()
    spec = fx.resolve_spec("ivfpq", len(vecs), vecs.shape[1])
    index = fx.new_index(spec, vecs.shape[1])
    t0 = time.perf_counter()
    where = fx.train_ivf(index, vecs, faiss.index_cpu_to_all_gpus)
    report.add("faiss ivfpq k-means on gpu", where == "gpu" and index.is_trained,
               trained_on=where, seconds=round(time.perf_counter() - t0, 3),
               vectors=len(vecs), nlist=spec.params["nlist"])


def check_ivfpq_index(report: Report, work: Path, catalog: Path, flat: Path) -> None:
    import faiss
    import numpy as np

    from indexer.reader import CatalogIndex

    out, log = index_catalog(work, catalog, "index-ivfpq", ["--index-type", "ivfpq"])
    exact, approx = CatalogIndex.open(flat), CatalogIndex.open(out)
    try:
        attr = exact.attributes[0]
        ids = [r["id"] for r in catalog_rows(catalog)[:50]]
        queries = np.stack([exact.embedding(i, attr) for i in ids])
        hits = approx.search(attr, queries, 5)
        recall = float(np.mean([i in {hit.item.id for hit in h} for i, h in
                                zip(ids, hits, strict=True)]))
        doc = approx.manifest.attributes[0].index
        # the job trains on the GPU when FAISS sees one; it logs a fallback to the CPU
        gpu_kmeans = faiss.get_num_gpus() > 0 and "training on the CPU" not in log
        report.add(f"indexer ivfpq ({DEVICE}, gpu k-means)",
                   doc.type == "ivfpq" and gpu_kmeans and recall >= 0.8,
                   self_recall_at_5=recall, nlist=doc.params["nlist"],
                   m=doc.params["m"], gpu_kmeans=gpu_kmeans,
                   seconds=approx.manifest.build["seconds"])
    finally:
        exact.close()
        approx.close()


def check_service(report: Report, work: Path, catalog: Path, index_dir: Path) -> None:
    """A real ``python -m service`` with ASEN_DEVICE=cuda; one search and one explain."""
    from demo import multipart  # a sibling script: scripts/ is on sys.path

    from service.startup import free_port, stop, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("ASEN_API_KEY",)}
    env.update({"ASEN_DEVICE": DEVICE, "ASEN_HOST": "127.0.0.1", "ASEN_PORT": str(port),
                "ASEN_INDEX_DIR": str(index_dir), "ASEN_CHECKPOINT": str(DEMO_CHECKPOINT),
                "ASEN_IMAGE_ROOTS": str(catalog.parent.resolve()),
                "ASEN_RELOAD_INTERVAL_S": "0"})
    log = open(work / "service.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.perf_counter()
        ready = wait_ready(url, proc, timeout=240)
        report.add(f"service /readyz ({DEVICE})", True, seconds=round(time.perf_counter() - t0, 1),
                   items=ready.get("items"))
        first = catalog_rows(catalog)[0]
        attr = ready["attributes"][0]
        image = (catalog.parent / first["image"]).read_bytes()
        search = post(url, "/v1/search", {"attribute": attr, "k": "5"},
                      {"image": ("q.jpg", image, "image/jpeg")}, multipart)
        top = search["results"][0]
        report.add(f"service search ({DEVICE})",
                   search["model"]["device"].startswith(DEVICE) and top["id"] == first["id"],
                   device=search["model"]["device"], top1=top["id"],
                   top1_score=float(top["score"]), embed_ms=search["timings"]["embed_ms"],
                   total_ms=search["timings"]["total_ms"])
        expl = post(url, "/v1/explain", {"attribute": attr, "item_id": first["id"]}, {},
                    multipart)
        attn_sum = float(sum(map(sum, expl["attention"])))
        report.add(f"service explain ({DEVICE})",
                   expl["model"]["device"].startswith(DEVICE) and expl["box"] is not None
                   and abs(attn_sum - 1.0) < 1e-3,
                   box=tuple(expl["box"].values()) if expl["box"] else None,
                   attention_sum=attn_sum, embed_ms=expl["timings"]["embed_ms"])
    except Exception:
        log.flush()
        print(f"service log (tail):\n{(work / 'service.log').read_text()[-3000:]}")
        raise
    finally:
        stop(proc)
        log.close()


def post(url: str, path: str, fields: dict, files: dict, multipart) -> dict:
    import urllib.request

    body, ctype = multipart(fields, files)
    req = urllib.request.Request(url + path, data=body, method="POST",
                                 headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def check_bench(report: Report, work: Path, images: int, batch_size: int) -> None:
    """``bench/embed.py`` on CUDA, paper config: images/s per precision."""
    out = work / f"bench-{batch_size or 'default'}.json"
    argv = [str(REPO / "bench" / "embed.py"), "--config", "paper", "--device", DEVICE,
            "--precision", *precisions(), "--images", str(images), "--repeats", "3",
            "--json", str(out)]
    if batch_size:
        argv += ["--batch-size", str(batch_size)]
    run_cli(argv, 420, work / f"bench-{batch_size or 'default'}.log")
    for r in json.loads(out.read_text())["results"]:
        rate = r["shared_images_per_s"]
        goal = None if r["precision"] == "fp32" else rate >= BENCH_GOAL
        report.add(f"bench paper {r['precision']} rows/pass={batch_size or 'default'}", goal,
                   images_per_s=round(rate, 1), naive_images_per_s=round(
                       r["naive_images_per_s"], 1), attributes=r["attributes"],
                   goal=BENCH_GOAL if goal is not None else "-",
                   cos_to_fp32_min=r.get("cosine_to_fp32_min", 1.0))


# -- main -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True,
                   help="table file: markdown, or JSON for a .json name (both are written)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="catalog, indexes and logs (default: a temporary folder, removed)")
    p.add_argument("--n-items", type=int, default=256, help="synthetic catalog size (256)")
    p.add_argument("--bench-images", type=int, default=256, help="bench/embed.py --images")
    p.add_argument("--bench-batch-size", type=int, nargs="*", default=[0, 512],
                   help="rows per forward pass for the bench; 0 = the embedder's default")
    p.add_argument("--min-cosine", type=float, default=MIN_COSINE,
                   help=f"pass mark of the cosine to the CPU fp32 embedding ({MIN_COSINE})")
    p.add_argument("--dry-run-on-cpu", action="store_true",
                   help="run the same steps on the CPU to test this script (no CUDA claims)")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["demo", "paper", "indexer", "service", "bench"],
                   help="leave these checks out")
    return p


def no_gpu_reason() -> str | None:
    """Why CUDA cannot be checked here, or None when a GPU is visible."""
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA GPU is visible to torch (torch.cuda.is_available() is False; "
                f"torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}): nothing was checked")
    return None


def run_checks(report: Report, args: argparse.Namespace, work: Path) -> None:
    report.run("environment", lambda: check_environment(report))
    catalog = None
    try:
        catalog, seconds = make_catalog(work, args.n_items)
        report.add("synthetic catalog", True, items=args.n_items, seconds=round(seconds, 1))
    except Exception as exc:  # noqa: BLE001
        report.add("synthetic catalog", False, error=str(exc)[:300])
    images = load_images(catalog, N_IMAGES)
    if "demo" not in args.skip:
        report.run("demo", lambda: check_model(report, "demo", demo_maker, images))
    if "paper" not in args.skip:
        report.run("paper", lambda: check_model(report, "paper", paper_maker(), images))
    flat = None
    if catalog is not None and "indexer" not in args.skip:
        try:
            flat = check_flat_index(report, work, catalog, args.n_items)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            report.add("indexer flat (cuda)", False, error=str(exc)[-300:])
        if flat is not None:
            report.run("faiss ivfpq k-means on gpu", lambda: check_gpu_kmeans(report, flat))
            report.run(f"indexer ivfpq ({DEVICE}, gpu k-means)",
                       lambda: check_ivfpq_index(report, work, catalog, flat))
    if flat is not None and "service" not in args.skip:
        report.run(f"service ({DEVICE})", lambda: check_service(report, work, catalog, flat))
    if "bench" not in args.skip:
        for bs in args.bench_batch_size:
            report.run(f"bench rows/pass={bs or 'default'}",
                       lambda bs=bs: check_bench(report, work, args.bench_images, bs))


def main(argv: list[str] | None = None) -> int:
    global DEVICE, MIN_COSINE
    args = build_parser().parse_args(argv)
    DEVICE = "cpu" if args.dry_run_on_cpu else "cuda"
    MIN_COSINE = args.min_cosine
    reason = None if args.dry_run_on_cpu else no_gpu_reason()
    if reason is not None:
        print(f"gpu_check: {reason}", file=sys.stderr)
        return 2
    report = Report()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        run_checks(report, args, work)
    finally:
        report.add("total", None, seconds=round(time.perf_counter() - t0, 1))
        print("\n" + report.markdown(), flush=True)
        written = report.write(args.out)
        print(f"gpu_check: wrote {', '.join(map(str, written))}", flush=True)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
