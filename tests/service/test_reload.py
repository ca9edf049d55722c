"""Start without an index, pick it up, and hot-reload under load with zero failed requests.

The module's server starts without an index (``test_starts_without_an_index`` checks that,
so it runs before the others build one); the tests that need an index served build one
first when there is none yet (``served_version``), so each runs alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from testkit import run_indexer, subset_catalog

ADMIN = {"X-API-Key": "reload-admin"}


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("reload") / "idx"


@pytest.fixture(scope="module")
def server_env(index_dir):
    return {
        "ASEN_INDEX_DIR": str(index_dir),
        "ASEN_RELOAD_INTERVAL_S": "0.3",
        "ASEN_ADMIN_API_KEY": ADMIN["X-API-Key"],
    }


@pytest.fixture(scope="module")
def server_ready_path():
    return "/healthz"  # it starts without an index


def manifest_version(index_dir: Path) -> str:
    return json.loads((index_dir / "manifest.json").read_text())["index_version"]


def wait_for_version(client: httpx.Client, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200 and r.json()["index_version"] == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"server never served {version}: {client.get('/readyz').text}")


def reloads(client: httpx.Client) -> float:
    """The server's count of successful index loads (metrics)."""
    text = client.get("/metrics").text
    found = re.search(r'^asen_index_reloads_total\{result="success"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def served_version(client, fx, index_dir) -> str:
    """The version the server serves: an index of the tiny catalog, built first when the
    module's folder has none yet."""
    if not (index_dir / "manifest.json").exists():
        run_indexer(fx.catalog, fx.checkpoint, index_dir)
    version = manifest_version(index_dir)
    wait_for_version(client, version)
    return version


def test_starts_without_an_index(client, fx):
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert "no index" in ready.json()["error"]["message"]
    assert ready.headers["retry-after"]
    search = client.post("/v1/search", data={"attribute": "colour"}, files={
        "image": ("q.jpg", fx.image("train-000001").read_bytes(), "image/jpeg")})
    assert search.status_code == 503 and search.headers["retry-after"]
    assert client.get("/v1/attributes").status_code == 503


def test_picks_up_the_index_when_it_appears(client, fx, index_dir):
    run_indexer(fx.catalog, fx.checkpoint, index_dir)
    wait_for_version(client, manifest_version(index_dir))
    assert client.get("/v1/items").json()["total"] == len(fx.item_ids())


def test_hot_reload_under_concurrent_queries(client, server, fx, index_dir, served_version):
    old_version = served_version
    loads_before = reloads(client)
    image = fx.image("train-000003").read_bytes()
    stop = threading.Event()
    outcomes: list[tuple[str, int, str | None]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60.0) as c:
            i = 0
            while not stop.is_set():
                kind = ("upload", "by-item", "multi", "attributes")[(i + n) % 4]
                if kind == "upload":
                    r = c.post("/v1/search", files={"image": ("q.jpg", image, "image/jpeg")},
                               data={"attribute": "neckline", "k": "5"})
                elif kind == "by-item":
                    r = c.post("/v1/search/by-item",
                               json={"item_id": "train-000004", "attribute": "colour", "k": 5})
                elif kind == "multi":
                    r = c.post("/v1/search/multi",
                               files={"image": ("q.jpg", image, "image/jpeg")},
                               data={"weights": '{"colour": 1, "pattern": 2}', "k": "5"})
                else:
                    r = c.get("/v1/attributes")
                version = r.json().get("index_version") if r.status_code == 200 else None
                with lock:
                    outcomes.append((kind, r.status_code, version if version else r.text))
                i += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        small = subset_catalog(fx.catalog, fx.catalog.parent / "catalog-small.csv", 30)
        run_indexer(small, fx.checkpoint, index_dir)
        new_version = manifest_version(index_dir)
        assert new_version != old_version
        wait_for_version(client, new_version)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()

    failures = [o for o in outcomes if o[1] != 200]
    assert not failures, failures[:5]
    versions = [o[2] for o in outcomes]
    assert old_version in versions and new_version in versions
    assert len(outcomes) > 40
    # after the switch every answer comes from the new index
    assert versions[-1] == new_version
    sizes = {a["index_size"] for a in client.get("/v1/attributes").json()["attributes"]}
    assert sizes == {30}
    assert reloads(client) == loads_before + 1


def test_broken_new_index_keeps_the_old_one(client, index_dir, served_version):
    good_version = served_version
    good_folder = Path(os.path.realpath(index_dir))
    broken = good_folder.parent / "broken-version"
    shutil.copytree(good_folder, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["index_version"] = "broken-1"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    (broken / "colour.faiss").write_bytes(b"garbage")
    link = index_dir.parent / "idx.tmp-link"
    os.symlink(broken, link)
    os.replace(link, index_dir)  # the same atomic swap the indexer does
    time.sleep(1.5)  # several poll intervals
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["index_version"] == good_version
    status = client.get("/v1/admin/status", headers=ADMIN).json()
    assert "colour.faiss" in status["last_error"]
    forced = client.post("/v1/admin/reload", headers=ADMIN).json()
    assert forced["reloaded"] is False and forced["index_version"] == good_version
    r = client.post("/v1/search/by-item", json={"item_id": "train-000001", "attribute": "colour"})
    assert r.status_code == 200 and r.json()["index_version"] == good_version
    os.symlink(good_folder, link)
    os.replace(link, index_dir)
    shutil.rmtree(broken)


def test_admin_reload_switches_to_a_new_build(client, fx, index_dir):
    run_indexer(fx.catalog, fx.checkpoint, index_dir)
    new_version = manifest_version(index_dir)
    resp = client.post("/v1/admin/reload", headers=ADMIN)
    assert resp.status_code == 200
    assert resp.json()["index_version"] == new_version  # by this call or the poller before it
    wait_for_version(client, new_version, timeout=5)
    status = client.get("/v1/admin/status", headers=ADMIN).json()
    assert status["last_error"] is None and status["index_version"] == new_version
