#!/usr/bin/env python3
"""The one-command demo: synthetic catalog -> index -> API and web page on 127.0.0.1:8000.

    python scripts/demo.py [--workdir demo-data] [--n-items 300] [--port 8000] [--no-serve]

Three idempotent steps, each the project's own command line (printed as it runs):

1. ``python -m model.synth``: a small synthetic catalog in ``WORKDIR/catalog`` (reused when
   it was made with the same --n-items, --seed and --size);
2. ``python -m indexer``: the index in ``WORKDIR/index`` with the demo checkpoint (skipped
   when its manifest names the same checkpoint and catalog, by sha256);
3. ``python -m service`` with ``ASEN_INDEX_DIR=WORKDIR/index``; the URL is printed once the
   model and index are loaded. Ctrl-C stops it.

``--check`` serves, sends one search with a catalog image, prints the top hits and stops
(the smoke test CI runs). Exit codes: 0 ok, 1 a step failed, 2 usage or missing checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from indexer.freshness import index_is_current

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "model" / "weights" / "demo.pt"
DEFAULT_WORKDIR = REPO / "demo-data"
READY_TIMEOUT_S = 300.0


class DemoError(Exception):
    """A step failed; the message says which and what to do."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)



def run_step(argv: list[str]) -> None:
    """Run one of the project's CLIs with this interpreter; raise DemoError when it fails."""
    shown = " ".join(["python", *argv[1:]]) if argv[0] == sys.executable else " ".join(argv)
    say(f"$ {shown}")
    result = subprocess.run(argv, cwd=REPO)
    if result.returncode != 0:
        raise DemoError(f"`{shown}` failed with exit code {result.returncode} (see above)")


# -- step 1: catalog ----------------------------------------------------------------------
def synth_params(n_items: int, seed: int, size: int) -> dict:
    """What model.synth records in synth.json for the demo catalog (test split only)."""
    return {"seed": seed, "size": size, "counts": {"train": 0, "valid": 0, "test": n_items}}


def catalog_is_current(catalog_dir: Path, want: dict) -> bool:
    try:
        meta = json.loads((catalog_dir / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    if not (catalog_dir / "catalog.csv").is_file():
        return False
    return all(meta.get(k) == v for k, v in want.items())


def ensure_catalog(workdir: Path, n_items: int, seed: int, size: int) -> tuple[Path, bool]:
    """The synthetic catalog's catalog.csv and whether it was (re)generated now."""
    catalog_dir = workdir / "catalog"
    want = synth_params(n_items, seed, size)
    if catalog_is_current(catalog_dir, want):
        say(f"catalog: reusing {catalog_dir} ({n_items} items)")
        return catalog_dir / "catalog.csv", False
    if catalog_dir.exists() and not (catalog_dir / "synth.json").exists() and any(
            catalog_dir.iterdir()):
        raise DemoError(f"{catalog_dir} exists and was not written by the demo; move it away "
                        "or pass another --workdir", code=2)
    say(f"catalog: generating {n_items} synthetic items ({size} px) in {catalog_dir}")
    # Written next to the final folder and renamed, so an interrupted run leaves no
    # half-written catalog that a later run would take for a finished one.
    tmp = workdir / f".catalog.tmp-{uuid.uuid4().hex[:8]}"
    try:
        run_step([sys.executable, "-m", "model.synth", "--out", str(tmp), "--seed", str(seed),
                  "--n-train", "0", "--n-valid", "0", "--n-test", str(n_items),
                  "--size", str(size)])
        # An index over the old images must not survive (same CSV, other pixels).
        index = workdir / "index"
        if index.is_symlink() or index.exists():
            remove_path(index)
        if catalog_dir.exists():
            shutil.rmtree(catalog_dir)
        os.replace(tmp, catalog_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return catalog_dir / "catalog.csv", True


def remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


# -- step 2: index ------------------------------------------------------------------------
def ensure_index(workdir: Path, checkpoint: Path, catalog: Path, device: str | None,
                 rebuilt_catalog: bool) -> Path:
    index_dir = workdir / "index"
    current, why = index_is_current(index_dir, checkpoint, catalog)
    if current and not rebuilt_catalog:
        say(f"index: reusing {index_dir} ({why})")
        return index_dir
    say(f"index: building {index_dir} ({why})")
    argv = [sys.executable, "-m", "indexer", "--catalog", str(catalog),
            "--checkpoint", str(checkpoint), "--out", str(index_dir)]
    if device:
        argv += ["--device", device]
    run_step(argv)
    return index_dir


# -- step 3: serve ------------------------------------------------------------------------
def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def base_url(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def service_env(args: argparse.Namespace, index_dir: Path, checkpoint: Path,
                catalog: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ASEN_INDEX_DIR": str(index_dir),
        "ASEN_HOST": args.host,
        "ASEN_PORT": str(args.port),
        "ASEN_CHECKPOINT": str(checkpoint),
        # Item images are served from the demo catalog only.
        "ASEN_IMAGE_ROOTS": str(catalog.parent.resolve()),
    })
    if args.device:
        env["ASEN_DEVICE"] = args.device
    return env


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = READY_TIMEOUT_S) -> dict:
    """Poll /readyz until it answers 200; raise DemoError if the server dies or times out."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the server exited with code {proc.returncode} (see its log above)")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(1.0)
    raise DemoError(f"the server was not ready after {timeout:.0f} s ({last})")


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for name, (filename, data, ctype) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
                     + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def smoke_search(url: str, catalog: Path, attribute: str) -> dict:
    """POST the first catalog image to /v1/search; the parsed response."""
    with open(catalog, newline="") as f:
        first = next(csv.DictReader(f))
    image = (catalog.parent / first["image"]).read_bytes()
    body, ctype = multipart({"attribute": attribute, "k": "5"},
                            {"image": (Path(first["image"]).name, image, "image/jpeg")})
    headers = {"Content-Type": ctype}
    if os.environ.get("ASEN_API_KEY"):
        headers["X-API-Key"] = os.environ["ASEN_API_KEY"]
    req = urllib.request.Request(f"{url}/v1/search", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            result = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise DemoError(f"search failed: HTTP {exc.code} {exc.read()[:300]!r}") from None
    say(f"search by {first['id']}'s {attribute}: "
        + ", ".join(f"{r['id']} ({r['score']:.3f})" for r in result["results"]))
    return result


def serve(args: argparse.Namespace, index_dir: Path, checkpoint: Path, catalog: Path) -> int:
    if not port_is_free(args.host, args.port):
        raise DemoError(f"port {args.port} on {args.host} is in use (an earlier demo still "
                        "running?); stop it or pick another one: make demo DEMO_ARGS='--port "
                        "8001'", code=2)
    url = base_url(args.host, args.port)
    say(f"$ ASEN_INDEX_DIR={index_dir} ASEN_HOST={args.host} ASEN_PORT={args.port} "
        "python -m service")
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO,
                            env=service_env(args, index_dir, checkpoint, catalog))

    stopping = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        ready = wait_ready(url, proc)
        say(f"ready: {ready.get('items')} items, attributes {', '.join(ready['attributes'])}")
        if args.check:
            smoke_search(url, catalog, ready["attributes"][0])
            say("check passed")
            return 0
        print(f"\n  ASEN++ demo: {url}    (API docs: {url}/docs)\n"
              f"  curl -F image=@{(catalog.parent / 'images' / 'test' / '000000.jpg')}"
              f" -F attribute={ready['attributes'][0]} -F k=5 {url}/v1/search\n"
              "  Ctrl-C stops the server.\n", flush=True)
        code = proc.wait()
        if stopping:  # asked to stop: the server's signal exit is a normal end here
            return 0
        return 128 - code if code < 0 else code
    except KeyboardInterrupt:
        # Ctrl-C reached the server too (same process group): let it shut down by itself.
        say("stopping")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        return 0
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Stop the server gracefully (SIGTERM), then for good."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- main ---------------------------------------------------------------------------------
def check_checkpoint(path: Path) -> Path:
    if path.is_file():
        return path.resolve()
    if path == DEFAULT_CHECKPOINT:
        raise DemoError(
            f"the demo checkpoint {path} is missing. It is committed with the repository "
            "(re-clone, or `git checkout -- model/weights/demo.pt`); or train one with "
            "`python -m model.synth --out data/synth && python -m model.train --data data/synth "
            "--out runs/demo --config cpu` and pass --checkpoint runs/demo/best.pt.", code=2)
    raise DemoError(f"checkpoint not found: {path}", code=2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="where the catalog and the index go (default: demo-data/)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="model checkpoint (default: model/weights/demo.pt)")
    p.add_argument("--n-items", type=int, default=300, help="synthetic catalog size (300)")
    p.add_argument("--size", type=int, default=256, help="image short side in px (256)")
    p.add_argument("--seed", type=int, default=0, help="synthetic catalog seed (0)")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("ASEN_PORT") or 8000),
                   help="port to serve on (8000, or ASEN_PORT)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="indexer and service device (default: cuda if available)")
    p.add_argument("--rebuild", action="store_true",
                   help="regenerate the catalog and the index even if they are current")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-serve", action="store_true", help="prepare catalog and index only")
    g.add_argument("--check", action="store_true",
                   help="serve, run one search, print it and stop (smoke test)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_items < 1:
        print("error: --n-items must be at least 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        checkpoint = check_checkpoint(args.checkpoint)
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if args.rebuild:
            for name in ("index", "catalog"):
                if (workdir / name).is_symlink() or (workdir / name).exists():
                    remove_path(workdir / name)
        catalog, fresh = ensure_catalog(workdir, args.n_items, args.seed, args.size)
        index_dir = ensure_index(workdir, checkpoint, catalog, args.device, fresh)
        say(f"prepared in {time.perf_counter() - t0:.1f} s: catalog {catalog}, index {index_dir}")
        if args.no_serve:
            return 0
        return serve(args, index_dir, checkpoint, catalog)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
