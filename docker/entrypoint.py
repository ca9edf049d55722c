"""Container entry point: ``serve`` (the API, default) or ``index`` (the one-shot job).

    serve            python -m service (ASEN_HOST, ASEN_PORT, ASEN_INDEX_DIR, ...)
    index            build or update ASEN_INDEX_DIR from ASEN_CATALOG with ASEN_CHECKPOINT
    anything else    run as given, e.g. ``python -m model.train ...`` or ``bash``

``index`` is the start-up sequence the demo runs too (service/startup.py has its rules). It
is idempotent: it does nothing when the published manifest already names this checkpoint and
this catalog (by sha256), runs ``python -m indexer --update`` when an index exists (only new
or changed items are embedded) and a full build otherwise. With ASEN_DEMO_ITEMS > 0 it first
writes a synthetic catalog of that many items when the catalog does not exist, or when the
one there was synthesized with another count (the out-of-the-box demo). Environment
(besides the service's ASEN_*):

    ASEN_CATALOG          catalog file (default /data/catalog/catalog.csv)
    ASEN_CHECKPOINT       model checkpoint (default: the demo checkpoint in the image)
    ASEN_DEMO_ITEMS       synthetic items to generate when the catalog is missing (0)
                          or was synthesized with another count
    ASEN_INDEXER_ARGS     extra `python -m indexer` options, e.g. "--index-type hnsw"
    ASEN_INDEX_FORCE      1: rebuild even when the index is current
    ASEN_DEVICE, ASEN_PRECISION, ASEN_TORCH_THREADS   passed on as --device/--precision/--threads

No torch import: it must not pay torch's import time before handing over.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from pathlib import Path

from service import startup

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


def indexer_options() -> list[str]:
    """--no-progress, --device/--precision/--threads from ASEN_*, then ASEN_INDEXER_ARGS
    (an option given there wins)."""
    extra = shlex.split(os.environ.get("ASEN_INDEXER_ARGS", ""))
    options = ["--no-progress"]
    for env, flag in (("ASEN_DEVICE", "--device"), ("ASEN_PRECISION", "--precision"),
                      ("ASEN_TORCH_THREADS", "--threads")):
        value = os.environ.get(env, "").strip()
        if value and flag not in extra:
            options += [flag, value]
    return options + extra


def indexer_command(catalog: Path, checkpoint: Path, index_dir: Path, update: bool) -> list[str]:
    return startup.indexer_command(catalog, checkpoint, index_dir, update=update,
                                   options=indexer_options())


def deployment() -> startup.Deployment:
    """The index job's inputs, from the environment."""
    n_items = int(os.environ.get("ASEN_DEMO_ITEMS") or 0)
    return startup.Deployment(
        checkpoint=Path(os.environ.get("ASEN_CHECKPOINT") or default_checkpoint()),
        catalog=Path(os.environ.get("ASEN_CATALOG") or DEFAULT_CATALOG),
        index_dir=Path(os.environ.get("ASEN_INDEX_DIR") or DEFAULT_INDEX_DIR),
        synth=startup.SynthSpec(n_items) if n_items > 0 else None,
        force_index=env_flag("ASEN_INDEX_FORCE"),
        indexer_options=tuple(indexer_options()),
        missing_catalog_hint="set ASEN_CATALOG and mount it, or set ASEN_DEMO_ITEMS to "
                             "generate a synthetic one")


def index() -> int:
    d = deployment()
    try:
        startup.check_checkpoint(d.checkpoint, f"checkpoint not found: {d.checkpoint} (set "
                                               "ASEN_CHECKPOINT and mount the file)")
        plan = startup.prepare(d)
    except startup.StartupError as exc:
        log(str(exc))
        return exc.code
    if plan.command is None:
        log("nothing to do")
        return 0
    startup.replace_process(plan.command)


def serve() -> int:
    startup.replace_process(startup.service_command())


def main(argv: list[str]) -> int:
    startup.configure_logging(sys.stderr, "[entrypoint] ")
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
