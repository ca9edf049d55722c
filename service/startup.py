"""The start-up sequence of the demo (scripts/demo.py) and the container (docker/entrypoint.py):
catalog -> freshness check -> index -> serve, each step the project's own command line.

The rules, the same for both:

1. **checkpoint**: it must be a file (StartupError, code 2).
2. **catalog**: with synthetic items asked for (``Deployment.synth``), a catalog that
   ``model.synth`` wrote (``synth.json`` beside it) with the same items, seed and size is
   reused and one with other options is regenerated; a missing one is generated. It is
   written next to its folder and renamed into place, so an interrupted run leaves no half
   catalog, and the index over the old catalog is removed (same CSV, other pixels). Any other
   existing catalog is used as it is, unless ``synthetic_only`` (the demo, whose folder is
   its own) refuses it; a missing catalog without ``synth`` is an error (code 2).
3. **freshness**: nothing to build when the index's manifest names this checkpoint and this
   catalog file (sha256, :func:`indexer.freshness.index_is_current`); a folder catalog is
   always re-scanned; ``force_index`` rebuilds.
4. **index**: ``python -m indexer ... --update`` when an index exists (only new or changed
   images are embedded; another checkpoint re-embeds them all), a full build otherwise or
   when forced. :func:`prepare` returns that command; the caller runs it (:func:`run`) or
   hands its process over to it (:func:`replace_process`).
5. **serve**: ``python -m service`` (:func:`service_command`), configured by ``ASEN_*``.

Standard library only (besides ``indexer.freshness``): torch is not imported here, so the
container's entry point hands over to the indexer or the service at once. The synthetic
catalog is made by the ``python -m model.synth`` subprocess, never by importing
``model.training``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TextIO

from indexer.freshness import index_is_current

log = logging.getLogger(__name__)

SYNTH_CATALOG = "catalog.csv"  # model.synth writes DIR/catalog.csv
READY_TIMEOUT_S = 300.0         # loading a model and an index on a slow machine


class StartupError(Exception):
    """A step failed; the message says which and what to do. ``code``: the exit status
    (1 a step failed, 2 usage or missing input)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class SynthSpec:
    """A synthetic catalog of ``n_items`` test-split items (``python -m model.synth``)."""

    n_items: int
    seed: int = 0
    size: int = 256

    def recorded(self) -> dict[str, object]:
        """What model.synth records in synth.json for this catalog."""
        return {"seed": self.seed, "size": self.size,
                "counts": {"train": 0, "valid": 0, "test": self.n_items}}

    def command(self, out: Path) -> list[str]:
        return [sys.executable, "-m", "model.synth", "--out", str(out), "--seed",
                str(self.seed), "--n-train", "0", "--n-valid", "0", "--n-test",
                str(self.n_items), "--size", str(self.size)]


@dataclass(frozen=True, slots=True)
class Deployment:
    """What to prepare: the checkpoint, the catalog and the INDEX_DIR to build from them."""

    checkpoint: Path
    catalog: Path
    index_dir: Path
    synth: SynthSpec | None = None        # generate this catalog when missing or different
    synthetic_only: bool = False          # refuse a catalog that model.synth did not write
    regenerate_catalog: bool = False      # generate the synthetic catalog even if current
    force_index: bool = False             # full build even when the index is current
    indexer_options: tuple[str, ...] = ()  # more `python -m indexer` options
    missing_catalog_hint: str = ""        # appended to "catalog not found: PATH"


@dataclass(frozen=True, slots=True)
class IndexPlan:
    """The index step: why, and the indexer command to run (None: the index is current)."""

    reason: str
    command: list[str] | None

    @property
    def current(self) -> bool:
        return self.command is None


# -- commands -----------------------------------------------------------------------------
def shown(argv: Sequence[str]) -> str:
    """A command as a user would type it (this interpreter shown as ``python``)."""
    words = ["python", *argv[1:]] if argv and argv[0] == sys.executable else list(argv)
    return shlex.join(words)


def run(argv: Sequence[str]) -> None:
    """Run one of the project's commands, its output on ours; StartupError if it fails."""
    log.info("$ %s", shown(argv))
    result = subprocess.run(list(argv))
    if result.returncode != 0:
        raise StartupError(f"`{shown(argv)}` failed with exit code {result.returncode} "
                           "(see above)")


def replace_process(argv: Sequence[str]) -> NoReturn:
    """Hand this process over to a command (signals then reach it directly)."""
    log.info("$ %s", shown(argv))
    os.execv(argv[0], list(argv))


def indexer_command(catalog: Path, checkpoint: Path, index_dir: Path, *, update: bool,
                    options: Sequence[str] = ()) -> list[str]:
    """``python -m indexer`` (the one-shot job) for this catalog, checkpoint and INDEX_DIR."""
    cmd = [sys.executable, "-m", "indexer", "--catalog", str(catalog),
           "--checkpoint", str(checkpoint), "--out", str(index_dir)]
    if update:
        cmd.append("--update")
    return cmd + list(options)


def free_port() -> int:
    """A free TCP port on the loopback interface (for a server started on it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_command() -> list[str]:
    """``python -m service``: serves ASEN_INDEX_DIR on ASEN_HOST:ASEN_PORT."""
    return [sys.executable, "-m", "service"]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = READY_TIMEOUT_S) -> dict:
    """Poll URL/readyz until it answers 200 (its JSON); StartupError if the server ``proc``
    exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartupError(f"the server exited with code {proc.returncode} "
                               "(see its log above)")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(1.0)
    raise StartupError(f"the server was not ready after {timeout:.0f} s ({last})")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server gracefully (SIGTERM, 15 s to drain), then for good."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_cli_handler: logging.Handler | None = None


def configure_logging(stream: TextIO, prefix: str) -> None:
    """Show this module's steps on ``stream``, each line after ``prefix`` (for the CLIs;
    a second call replaces the first one's handler)."""
    global _cli_handler
    if _cli_handler is not None:
        log.removeHandler(_cli_handler)
    _cli_handler = logging.StreamHandler(stream)
    _cli_handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    log.addHandler(_cli_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


# -- the steps ----------------------------------------------------------------------------
def check_checkpoint(path: Path, missing: str | None = None) -> Path:
    """The checkpoint's resolved path; StartupError (code 2, message ``missing``) if absent."""
    if not path.is_file():
        raise StartupError(missing or f"checkpoint not found: {path}", code=2)
    return path.resolve()


def _synth_record(catalog_dir: Path) -> dict[str, object] | None:
    """synth.json of a catalog model.synth wrote (with its catalog.csv); None otherwise."""
    try:
        meta = json.loads((catalog_dir / "synth.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if (catalog_dir / SYNTH_CATALOG).is_file() and isinstance(meta, dict) else None


def ensure_catalog(d: Deployment) -> bool:
    """Step 2: the catalog is there afterwards; whether it was (re)generated now."""
    catalog, synth = d.catalog, d.synth
    if synth is None:
        if not catalog.exists():
            hint = f" ({d.missing_catalog_hint})" if d.missing_catalog_hint else ""
            raise StartupError(f"catalog not found: {catalog}{hint}", code=2)
        log.info("catalog: using %s", catalog)
        return False
    folder = catalog.parent
    record = _synth_record(folder) if catalog.name == SYNTH_CATALOG else None
    if record is None and catalog.exists() and not d.synthetic_only:
        log.info("catalog: using %s", catalog)
        return False
    if catalog.name != SYNTH_CATALOG:
        raise StartupError(f"cannot synthesize {catalog}: the synthetic catalog is always "
                           f"DIR/{SYNTH_CATALOG}", code=2)
    want = synth.recorded()
    if record is not None and not d.regenerate_catalog and all(
            record.get(k) == v for k, v in want.items()):
        log.info("catalog: reusing %s (%d items)", folder, synth.n_items)
        return False
    if record is None and folder.is_dir() and any(folder.iterdir()):
        raise StartupError(f"{folder} exists and was not written by model.synth; move it "
                           "away or choose another folder", code=2)
    why = ("a rebuild was asked for" if d.regenerate_catalog and record is not None
           else "made with other options" if record is not None else "missing")
    log.info("catalog: generating %d synthetic items (%d px) in %s (%s)", synth.n_items,
             synth.size, folder, why)
    _generate(folder, synth, d.index_dir)
    return True


def _generate(folder: Path, synth: SynthSpec, index_dir: Path) -> None:
    """model.synth into a sibling folder renamed into place (in place on a mount point);
    the index over the old catalog is removed first."""
    if folder.is_mount():
        _remove(index_dir)
        run(synth.command(folder))
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        run(synth.command(tmp))
        _remove(index_dir)
        _remove(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    """Remove a file, a symlink (not its target) or a folder; nothing if absent."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def plan_index(d: Deployment, checkpoint: Path) -> IndexPlan:
    """Steps 3 and 4: whether the index is current, else the indexer command to run."""
    if d.force_index:
        current, why = False, "a full rebuild was asked for"
    else:
        current, why = index_is_current(d.index_dir, checkpoint, d.catalog,
                                        tags="--no-tags" not in d.indexer_options)
    if current:
        log.info("index: reusing %s (%s)", d.index_dir, why)
        return IndexPlan(why, None)
    update = not d.force_index and (d.index_dir / "manifest.json").is_file()
    log.info("index: %s %s (%s)", "updating" if update else "building", d.index_dir, why)
    return IndexPlan(why, indexer_command(d.catalog, checkpoint, d.index_dir, update=update,
                                          options=d.indexer_options))


def prepare(d: Deployment) -> IndexPlan:
    """Steps 1 to 3 (checkpoint, catalog, freshness): the index step still to run."""
    checkpoint = check_checkpoint(d.checkpoint)
    ensure_catalog(d)
    return plan_index(d, checkpoint)
