"""Executable docs: every command block of README.md and docs/API.md runs as written against
`make demo`'s data (demo-data/), and every curl in them answers 2xx.

What the test does, in full (nothing else is changed in a block):

- It extracts the fenced ```bash, ```sh, ```shell and ```console blocks (of a console block,
  the lines starting with `$ `) and runs each in `bash -exo pipefail` (no `-u`: an unset
  variable is empty, as in an interactive shell), in document order, in a sandbox folder that
  mirrors the repository (a symlink per tracked top-level entry, and .venv) except
  `demo-data/`: its `catalog/` is make demo's (read only), its `index/` a private copy, so that
  the live-change examples write their journal there, not into the demo's. The sandbox's
  environment is this one without ASEN_* variables, with the venv's `bin/` first on PATH (as
  after `. .venv/bin/activate`).
- `curl` is a wrapper that adds `--fail-with-body -S`: an HTTP status of 400 or more fails the
  block, with the answer and the failing command in the report.
- The block marked `<!-- doc-test: server -->` (one, in docs/API.md: `python -m service` on
  demo-data/index) is started in the background with ASEN_PORT set to a free port, and the
  others' `http://127.0.0.1:8000` is rewritten to that port (the only rewrite).
- A block preceded by `<!-- doc-test: skip (REASON) -->` is not run; REASON is required and
  says which other test covers it. Keep these few: Docker, training runs, files that cannot be
  shipped (the authors' checkpoints and images), `make demo`/`make test` themselves.
- ```python blocks, run or not, must compile and use no undefined name (ruff F821).

demo-data/ is prepared with `scripts/demo.py --no-serve` (a no-op when current; CI made it
with `make demo DEMO_ARGS=--check`); a demo-data/ made with other options than the defaults
is left alone and a default one is prepared in a temporary folder instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from testkit import REPO_ROOT, free_port, wait_until_ready

DOCS = (REPO_ROOT / "README.md", REPO_ROOT / "docs" / "API.md")
SHELL = {"bash", "sh", "shell", "console"}
DOC_URL = "http://127.0.0.1:8000"
DEMO_DEFAULTS = {"seed": 0, "size": 256, "test": 300}   # scripts/demo.py's catalog options
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+)\s*(?P<lang>[\w+-]*)")
MARKER = re.compile(r"<!--\s*doc-test:\s*(?P<kind>[a-z]+)\s*(?:\((?P<reason>.*)\))?\s*-->")
BLOCK_TIMEOUT_S = 60


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int                 # of the opening fence, from 1
    lang: str
    text: str
    marker: str | None        # "skip", "server" or None
    reason: str | None

    @property
    def name(self) -> str:
        return f"{self.doc.name}:{self.line}"

    def script(self) -> str:
        if self.lang != "console":
            return self.text
        return "\n".join(ln[2:] for ln in self.text.splitlines() if ln.startswith("$ "))


def doc_blocks(doc: Path) -> list[Block]:
    """The fenced blocks of ``doc`` with the doc-test marker on the line before each."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines))
                    if lines[j].strip().startswith(m["fence"]) and not lines[j].strip()
                    .strip("`")), len(lines))
        body = [ln[len(m["indent"]):] if ln.startswith(m["indent"]) else ln
                for ln in lines[i + 1:end]]
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARKER.fullmatch(prev.strip())
        blocks.append(Block(doc, i + 1, m["lang"].lower(), "\n".join(body) + "\n",
                            mark["kind"] if mark else None,
                            (mark["reason"] or "").strip() or None if mark else None))
        i = end + 1
    return blocks


ALL_BLOCKS = [b for doc in DOCS for b in doc_blocks(doc)]
RUN = [b for b in ALL_BLOCKS if b.lang in SHELL and b.marker is None]


def test_markers_are_known_and_justified():
    n_markers = 0
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("<!--") and "doc-test" in line:
                n_markers += 1
                m = MARKER.fullmatch(line.strip())
                assert m and m["kind"] in ("skip", "server"), \
                    f"{doc.name}:{n}: unknown doc-test marker {line.strip()!r}"
                assert m["kind"] != "skip" or (m["reason"] or "").strip(), \
                    f"{doc.name}:{n}: a skip needs a reason: <!-- doc-test: skip (why) -->"
    marked = [b for b in ALL_BLOCKS if b.marker]
    assert n_markers == len(marked), "a doc-test marker must be the line just before a fence"
    servers = [b for b in ALL_BLOCKS if b.marker == "server"]
    assert len(servers) == 1 and servers[0].lang in SHELL, [b.name for b in servers]
    assert RUN, "no command block to run"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "python"],
                         ids=lambda b: b.name)
def test_python_blocks_are_complete(block):
    compile(block.text, block.name, "exec")
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated",
                          "--select", "F821", "--stdin-filename", "block.py", "-"],
                         input=block.text, capture_output=True, text=True, cwd=REPO_ROOT)
    assert res.returncode == 0, f"{block.name}:\n{res.stdout}{res.stderr}"


# --------------------------------------------------------------- the sandbox and the server
def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ASEN_")}


def _demo_workdir(tmp: Path) -> Path:
    """make demo's folder, prepared (or a default one in ``tmp``; see the module docstring)."""
    workdir = REPO_ROOT / "demo-data"
    record = workdir / "catalog" / "synth.json"
    if record.is_file():
        synth = json.loads(record.read_text())
        made = {"seed": synth.get("seed"), "size": synth.get("size"),
                "test": synth.get("counts", {}).get("test")}
        if made != DEMO_DEFAULTS:
            workdir = tmp / "demo-data"
    res = subprocess.run([sys.executable, "scripts/demo.py", "--workdir", str(workdir),
                          "--no-serve"], cwd=REPO_ROOT, env=_clean_env(), capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, f"scripts/demo.py --no-serve failed:\n{res.stdout}{res.stderr}"
    return workdir


def _top_level_entries() -> set[str]:
    """The repository's tracked top-level files and folders, and the venv (not a developer's
    untracked runs/ or data/, which a block writing there must not reach)."""
    res = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True,
                         text=True)
    names = ({p.split("/")[0] for p in res.stdout.split("\0") if p} if res.returncode == 0
             else {e.name for e in REPO_ROOT.iterdir()})
    return (names | {".venv"}) - {"demo-data", ".git"}


def _sandbox(tmp: Path, workdir: Path) -> Path:
    box = tmp / "sandbox"
    box.mkdir()
    for name in sorted(_top_level_entries()):
        if (REPO_ROOT / name).exists():
            (box / name).symlink_to(REPO_ROOT / name)
    (box / "demo-data").mkdir()
    (box / "demo-data" / "catalog").symlink_to(workdir / "catalog")
    shutil.copytree(os.path.realpath(workdir / "index"), box / "demo-data" / "index")
    return box


def _env(tmp: Path) -> dict[str, str]:
    """The blocks' environment: PATH with the curl wrapper, then the venv's bin/."""
    real = shutil.which("curl")
    assert real, "the docs' examples need curl"
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "curl"
    wrapper.write_text(f'#!/bin/sh\nexec {real} --fail-with-body -S "$@"\n')
    wrapper.chmod(0o755)
    env = _clean_env()
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent),
                                   env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    return env


@dataclass
class Live:
    box: Path
    env: dict[str, str]
    url: str


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("docs")
    box = _sandbox(tmp, _demo_workdir(tmp))
    env = _env(tmp)
    server = next(b for b in ALL_BLOCKS if b.marker == "server")
    port = free_port()
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["bash", "-eo", "pipefail", "-c", server.script()], cwd=box,
                            env={**env, "ASEN_PORT": str(port), "ASEN_HOST": "127.0.0.1"},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/readyz", timeout=120, exited=lambda: None if proc.poll()
                         is None else f"{server.name} exited: "
                         + (tmp / "server.log").read_text(errors="replace")[-2000:])
        yield Live(box, env, url)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.name)
def test_command_block(block, live):
    script = block.script().replace(DOC_URL, live.url)
    res = subprocess.run(["bash", "-exo", "pipefail", "-c", script], cwd=live.box,
                         env=live.env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert res.returncode == 0, (f"{block.name} failed (exit {res.returncode}):\n"
                                 f"--- stderr (the commands as run) ---\n{res.stderr[-4000:]}\n"
                                 f"--- stdout ---\n{res.stdout[-2000:]}")
