"""Helpers for tests and benchmarks (not part of the installed package): a tiny synthetic
index and a real ``python -m service`` process."""

from __future__ import annotations

import atexit
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent  # tests/ is one level below the root


@dataclass(frozen=True)
class Fixture:
    """A synthetic catalog, a random tiny checkpoint and an index built by the indexer CLI."""

    root: Path
    catalog: Path
    checkpoint: Path
    index_dir: Path

    def image(self, item_id: str) -> Path:
        """The image file of a catalog item."""
        with open(self.catalog, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row["id"] == item_id:
                    return (self.catalog.parent / row["image"]).resolve()
        raise KeyError(item_id)

    def item_ids(self) -> list[str]:
        with open(self.catalog, newline="", encoding="utf-8") as fh:
            return [row["id"] for row in csv.DictReader(fh)]


def run_indexer(catalog: Path, checkpoint: Path, out: Path, *extra: str) -> str:
    """``python -m indexer`` as a subprocess; returns its output (raises on failure)."""
    cmd = [sys.executable, "-m", "indexer", "--catalog", str(catalog), "--checkpoint",
           str(checkpoint), "--out", str(out), "--workers", "0", "--no-progress", *extra]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"indexer failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def subset_catalog(catalog: Path, out: Path, n: int) -> Path:
    """Write the first ``n`` rows of a CSV catalog next to it (same relative image paths)."""
    with open(catalog, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:n])
    return out


_CACHE: dict[tuple, Fixture | ProductFixture] = {}


def build_fixture(n_train: int = 40, n_test: int = 8, size: int = 128, seed: int = 0,
                  checkpoint: Path | None = None) -> Fixture:
    """Build (once per process) a synthetic catalog, a checkpoint (default: a random tiny
    one) and its index."""
    key = (n_train, n_test, size, seed, str(checkpoint))
    if key in _CACHE:
        return _CACHE[key]
    import torch

    from model import build_model, save_checkpoint
    from model.training.data import read_attributes
    from model.training.synth import generate

    root = Path(tempfile.mkdtemp(prefix="asen-service-"))
    atexit.register(shutil.rmtree, root, True)
    data = root / "data"
    generate(data, seed=seed, n_train=n_train, n_valid=2, n_test=n_test, size=size, workers=1)
    if checkpoint is None:
        checkpoint = root / "tiny.pt"
        with torch.random.fork_rng():   # the same random model on every run
            torch.manual_seed(seed)
            net = build_model("tiny", read_attributes(data))
        save_checkpoint(net, checkpoint)
    index_dir = root / "index"
    run_indexer(data / "catalog.csv", checkpoint, index_dir)
    fixture = Fixture(root, data / "catalog.csv", checkpoint, index_dir)
    _CACHE[key] = fixture
    return fixture


def run_indexer_stage(stage: str, *args: str) -> str:
    """``python -m indexer embed|build ...`` as a subprocess (raises on failure)."""
    cmd = [sys.executable, "-m", "indexer", stage, *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"indexer {stage} failed ({proc.returncode}):\n{proc.stdout}\n"
                           f"{proc.stderr}")
    return proc.stdout


@dataclass(frozen=True)
class ProductFixture:
    """The tiny fixture's catalog with a ``product_id`` column (3 consecutive items per
    product) and an ``edition`` column ("limited" for the last item only, "regular" for the
    rest), its embeddings store and a flat index built from that store."""

    base: Fixture
    catalog: Path
    embeddings: Path
    index_dir: Path

    def build(self, out: Path, *extra: str) -> Path:
        """Another index of the same store (e.g. ``--index-type hnsw``)."""
        run_indexer_stage("build", "--embeddings", str(self.embeddings), "--catalog",
                          str(self.catalog), "--checkpoint", str(self.base.checkpoint),
                          "--out", str(out), *extra)
        return out


def product_id(position: int, group_size: int = 3) -> str:
    """The product of the catalog row at ``position``."""
    return f"p{position // group_size:03d}"


def build_product_fixture(fixture: Fixture | None = None) -> ProductFixture:
    """Build (once per process) the product catalog, its store and its flat index."""
    fixture = fixture or build_fixture()
    key = ("products", str(fixture.root))
    if key in _CACHE:
        return _CACHE[key]  # type: ignore[return-value]
    with open(fixture.catalog, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    catalog = fixture.catalog.with_name("catalog-products.csv")
    with open(catalog, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], "product_id", "edition"])
        writer.writeheader()
        writer.writerows({**row, "product_id": product_id(i),
                          "edition": "limited" if i == len(rows) - 1 else "regular"}
                         for i, row in enumerate(rows))
    embeddings = fixture.root / "products-emb"
    run_indexer_stage("embed", "--catalog", str(catalog), "--checkpoint",
                      str(fixture.checkpoint), "--out", str(embeddings), "--workers", "0",
                      "--no-progress")
    products = ProductFixture(fixture, catalog, embeddings, fixture.root / "products-flat")
    products.build(products.index_dir, "--index-type", "flat")
    _CACHE[key] = products  # type: ignore[assignment]
    return products


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m service`` in a subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], log_dir: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "ASEN_HOST": "127.0.0.1", "ASEN_PORT": str(self.port),
                    "ASEN_LOG_LEVEL": "warning", **env}
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="asen-server-"))
        self.log_path = log_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO_ROOT,
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, path: str = "/healthz", timeout: float = 90.0) -> None:
        """Poll ``path`` until it answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url}{path} not 200 after {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
