"""Container entry point: ``serve`` (the API, default) or ``index`` (the one-shot job).

    serve            python -m service (ASEN_HOST, ASEN_PORT, ASEN_INDEX_DIR, ...)
    index            build or update ASEN_INDEX_DIR from ASEN_CATALOG with ASEN_CHECKPOINT
    anything else    run as given, e.g. ``python -m model.train ...`` or ``bash``

``index`` is idempotent: it does nothing when the published manifest already names this
checkpoint and this catalog (by sha256), runs ``python -m indexer --update`` when an index
exists (only new or changed items are embedded) and a full build otherwise. When the catalog
does not exist and ASEN_DEMO_ITEMS > 0, it first writes a synthetic catalog of that many
items there (the out-of-the-box demo). Environment (besides the service's ASEN_*):

    ASEN_CATALOG          catalog file (default /data/catalog/catalog.csv)
    ASEN_CHECKPOINT       model checkpoint (default: the demo checkpoint in the image)
    ASEN_DEMO_ITEMS       synthetic items to generate when the catalog is missing (0)
    ASEN_INDEXER_ARGS     extra `python -m indexer` options, e.g. "--index-type hnsw"
    ASEN_INDEX_FORCE      1: rebuild even when the index is current
    ASEN_DEVICE, ASEN_PRECISION, ASEN_TORCH_THREADS   passed on as --device/--precision/--threads

Standard library only: it must not pay torch's import time before handing over.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

from indexer.freshness import index_is_current

DEFAULT_CATALOG = "/data/catalog/catalog.csv"
DEFAULT_INDEX_DIR = "/data/index"


def log(message: str) -> None:
    print(f"[entrypoint] {message}", file=sys.stderr, flush=True)



def default_checkpoint() -> Path:
    """The demo checkpoint shipped as package data of the installed `model` package."""
    spec = importlib.util.find_spec("model")
    if spec is None or not spec.submodule_search_locations:
        return Path("model/weights/demo.pt")
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "demo.pt"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def synthesize(catalog: Path, n_items: int) -> None:
    if catalog.name != "catalog.csv":
        raise SystemExit(f"[entrypoint] cannot synthesize {catalog}: the synthetic catalog "
                         "is always DIR/catalog.csv")
    log(f"{catalog} is missing: generating a synthetic catalog of {n_items} items")
    cmd = [sys.executable, "-m", "model.synth", "--out", str(catalog.parent), "--n-train", "0",
           "--n-valid", "0", "--n-test", str(n_items)]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise SystemExit(result.returncode)


def indexer_command(catalog: Path, checkpoint: Path, index_dir: Path, update: bool) -> list[str]:
    cmd = [sys.executable, "-m", "indexer", "--catalog", str(catalog),
           "--checkpoint", str(checkpoint), "--out", str(index_dir), "--no-progress"]
    if update:
        cmd.append("--update")
    extra = shlex.split(os.environ.get("ASEN_INDEXER_ARGS", ""))
    for env, flag in (("ASEN_DEVICE", "--device"), ("ASEN_PRECISION", "--precision"),
                      ("ASEN_TORCH_THREADS", "--threads")):
        value = os.environ.get(env, "").strip()
        if value and flag not in extra:
            cmd += [flag, value]
    return cmd + extra


def index() -> int:
    catalog = Path(os.environ.get("ASEN_CATALOG") or DEFAULT_CATALOG)
    index_dir = Path(os.environ.get("ASEN_INDEX_DIR") or DEFAULT_INDEX_DIR)
    checkpoint = Path(os.environ.get("ASEN_CHECKPOINT") or default_checkpoint())
    if not checkpoint.is_file():
        log(f"checkpoint not found: {checkpoint} (set ASEN_CHECKPOINT and mount the file)")
        return 2
    if not catalog.exists():
        n_items = int(os.environ.get("ASEN_DEMO_ITEMS") or 0)
        if n_items <= 0:
            log(f"catalog not found: {catalog} (set ASEN_CATALOG and mount it, or set "
                "ASEN_DEMO_ITEMS to generate a synthetic one)")
            return 2
        synthesize(catalog, n_items)
    force = env_flag("ASEN_INDEX_FORCE")
    if force:
        current, why = False, "ASEN_INDEX_FORCE is set"
    elif catalog.is_dir():
        current, why = False, "a folder catalog is always re-scanned"
    else:
        current, why = index_is_current(index_dir, checkpoint, catalog)
    if current:
        log(f"{why}; nothing to do")
        return 0
    update = (index_dir / "manifest.json").is_file() and not force
    cmd = indexer_command(catalog, checkpoint, index_dir, update)
    log(f"{why}: {' '.join(shlex.quote(c) for c in cmd)}")
    os.execv(cmd[0], cmd)
    return 1  # not reached


def serve() -> int:
    cmd = [sys.executable, "-m", "service"]
    os.execv(cmd[0], cmd)
    return 1  # not reached


def main(argv: list[str]) -> int:
    if not argv or argv[0] == "serve":
        return serve()
    if argv[0] == "index":
        if len(argv) > 1:
            log("`index` takes no arguments; configure it with ASEN_* (see ASEN_INDEXER_ARGS)")
            return 2
        return index()
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        log(f"unknown command {argv[0]!r}: use serve, index or a program in the image")
        return 127
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
