#!/usr/bin/env python3
"""The one-command demo: synthetic catalog -> index -> API and web page on 127.0.0.1:8000.

    python scripts/demo.py [--workdir demo-data] [--n-items 300] [--port 8000] [--no-serve]

Three idempotent steps, each the project's own command line (printed as it runs), in the
start-up sequence the container runs too (service/startup.py has its rules):

1. ``python -m model.synth``: a small synthetic catalog in ``WORKDIR/catalog`` (reused when
   it was made with the same --n-items, --seed and --size);
2. ``python -m indexer``: the index in ``WORKDIR/index`` with the demo checkpoint (skipped
   when its manifest names the same checkpoint and catalog, by sha256; ``--update`` of an
   existing index otherwise);
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
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from service import startup
from service.startup import StartupError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "model" / "weights" / "demo.pt"
DEFAULT_WORKDIR = REPO / "demo-data"


DemoError = StartupError  # a step failed (the message says which); .code is the exit status


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# -- serving -------------------------------------------------------------------------------
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
    proc = subprocess.Popen(startup.service_command(), cwd=REPO,
                            env=service_env(args, index_dir, checkpoint, catalog))

    stopping = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        ready = startup.wait_ready(url, proc)
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
        startup.stop(proc)


# -- main ---------------------------------------------------------------------------------
def check_checkpoint(path: Path) -> Path:
    missing = None
    if path == DEFAULT_CHECKPOINT:
        missing = (
            f"the demo checkpoint {path} is missing. It is committed with the repository "
            "(re-clone, or `git checkout -- model/weights/demo.pt`); or train one with "
            "`python -m model.synth --out data/synth && python -m model.train --data data/synth "
            "--out runs/demo --config cpu` and pass --checkpoint runs/demo/best.pt.")
    return startup.check_checkpoint(path, missing)


def usable_checkpoint(args: argparse.Namespace, checkpoint: Path) -> Path:
    """``checkpoint``, or for a published one its self-describing copy in WORKDIR/checkpoints
    (model.convert); DemoError (code 2) for a published one without --attributes."""
    if checkpoint == DEFAULT_CHECKPOINT.resolve() and not args.attributes:
        return checkpoint  # ours: no need to import torch here
    from model.attributes import parse_attributes_option
    from model.convert import self_describing

    try:
        attributes = parse_attributes_option(args.attributes) if args.attributes else None
        path = self_describing(checkpoint, attributes, args.workdir.resolve() / "checkpoints")
    except ValueError as exc:  # CheckpointError too
        raise DemoError(str(exc), code=2) from None
    if path != checkpoint:
        say(f"published checkpoint {checkpoint} ({args.attributes}): using its "
            f"self-describing copy {path}")
    return path.resolve()


def deployment(args: argparse.Namespace, checkpoint: Path) -> startup.Deployment:
    """The demo's catalog and index: WORKDIR/catalog (synthetic only) and WORKDIR/index."""
    workdir = args.workdir.resolve()
    return startup.Deployment(
        checkpoint=checkpoint, catalog=workdir / "catalog" / "catalog.csv",
        index_dir=workdir / "index", synth=startup.SynthSpec(args.n_items, args.seed, args.size),
        synthetic_only=True, regenerate_catalog=args.rebuild, force_index=args.rebuild,
        indexer_options=("--device", args.device) if args.device else ())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="where the catalog and the index go (default: demo-data/)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="model checkpoint (default: model/weights/demo.pt)")
    p.add_argument("--attributes", default=None, metavar="SET",
                   help="the attributes of a published checkpoint (FashionAI, DARN, "
                        "DeepFashion or a comma-separated list): the demo uses its "
                        "self-describing copy in WORKDIR/checkpoints/")
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
    startup.configure_logging(sys.stdout, "[demo] ")
    t0 = time.perf_counter()
    try:
        d = deployment(args, usable_checkpoint(args, check_checkpoint(args.checkpoint)))
        d.index_dir.parent.mkdir(parents=True, exist_ok=True)
        plan = startup.prepare(d)
        if plan.command is not None:
            startup.run(plan.command)
        say(f"prepared in {time.perf_counter() - t0:.1f} s: catalog {d.catalog}, "
            f"index {d.index_dir}")
        if args.no_serve:
            return 0
        return serve(args, d.index_dir, d.checkpoint, d.catalog)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
