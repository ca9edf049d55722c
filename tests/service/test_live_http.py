"""Live catalog changes over real HTTP: PUT / DELETE /v1/admin/items/{id} against real
`python -m service` processes, the journal beside a real index folder, restarts, two replicas
on one folder, concurrent load, and `python -m indexer --update` folding the journal.

The module's two servers share one index folder of the module's own (the tiny catalog
indexed into a temporary folder). Each test makes the changes it checks, on ids of its own
(new ids with its own prefix, and the catalog items of ``REPLACED`` and ``DELETED``), and
checks only those, so that any test runs alone or in any order. ASEN_LIVE_STRESS_SECONDS
shortens the concurrency test (default 30 s).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageOps
from testkit import ServerProcess, encode_image, error_of, ok, run_indexer

from indexer.live.fold import read_layer
from indexer.live.journal import Journal

ADMIN_KEY = "live-admin-key"
HEADERS = {"X-API-Key": ADMIN_KEY}
STRESS_SECONDS = float(os.environ.get("ASEN_LIVE_STRESS_SECONDS", "30"))
#: catalog positions each test replaces / deletes (no two tests change the same item)
REPLACED = {"replace": 5, "restart": 9, "fold": 13, "kept": 17}
DELETED = {"delete": 7, "restart": 11, "fold": 15, "kept": 19}


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def live_index(fx, tmp_path_factory) -> Path:
    """An index of the fixture catalog in a folder of this module's own."""
    out = tmp_path_factory.mktemp("live") / "index"
    run_indexer(fx.catalog, fx.checkpoint, out)
    return out


@pytest.fixture(scope="module")
def server_env(fx, live_index) -> dict[str, str]:
    # ASEN_IMAGE_ROOTS: the catalog's folder only; live images are served from the journal
    return {"ASEN_INDEX_DIR": str(live_index), "ASEN_ADMIN_API_KEY": ADMIN_KEY,
            "ASEN_RELOAD_INTERVAL_S": "0", "ASEN_IMAGE_ROOTS": str(fx.catalog.parent)}


@pytest.fixture(scope="module")
def attributes(client) -> list[str]:
    return [a["name"] for a in client.get("/v1/attributes").json()["attributes"]]


@pytest.fixture(scope="module")
def second_server(server_env):
    """Another replica on the same index folder."""
    with ServerProcess(server_env) as srv:
        srv.wait("/readyz")
        yield srv


def new_image(fx, seed: int) -> bytes:
    """A PNG no catalog item has: a catalog image mirrored, rotated and tinted by `seed`."""
    ids = fx.item_ids()
    img = Image.open(fx.image(ids[seed % len(ids)])).convert("RGB")
    img = ImageOps.mirror(img).rotate(7 + (seed * 37) % 340, expand=True)
    tint = Image.new("RGB", img.size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 29) % 256))
    return encode_image(Image.blend(img, tint, 0.15 + (seed % 7) * 0.05))


def put(client: httpx.Client, item_id: str, image: bytes, metadata: dict | None = None,
        headers: dict | None = None) -> httpx.Response:
    data = {} if metadata is None else {"metadata": json.dumps(metadata)}
    return client.put(f"/v1/admin/items/{item_id}", files={"image": ("x.png", image,
                      "image/png")}, data=data, headers=HEADERS if headers is None else headers)


def delete(client: httpx.Client, item_id: str) -> httpx.Response:
    return client.delete(f"/v1/admin/items/{item_id}", headers=HEADERS)


def search_ids(client, image: bytes, attribute: str, k: int = 5,
               filters: dict | None = None) -> list[tuple[str, float]]:
    data = {"attribute": attribute, "k": str(k)}
    if filters:
        data["filters"] = json.dumps(filters)
    body = ok(client.post("/v1/search", files={"image": ("q.png", image, "image/png")},
                          data=data))
    return [(r["id"], r["score"]) for r in body["results"]]


def all_ids(client) -> list[str]:
    out, offset = [], 0
    while True:
        page = ok(client.get("/v1/items", params={"offset": offset, "limit": 200}))
        out += [i["id"] for i in page["items"]]
        offset += 200
        if offset >= page["total"]:
            assert len(out) == page["total"], (len(out), page["total"])
            return out


def assert_own_top1(client, item_id: str, image: bytes, attribute: str) -> None:
    hits = search_ids(client, image, attribute, k=3)
    assert hits[0][0] == item_id, hits
    assert hits[0][1] == pytest.approx(1.0, abs=1e-4), hits


def journal_entries(index_dir: Path) -> int:
    """Rows of the journal's pending table."""
    con = Journal.of(index_dir).connect()
    try:
        return Journal.pending(con, 0)
    finally:
        con.close()


@dataclass
class Changes:
    """The live changes one test made (``tag``): id -> image of the items put (a new item
    and the catalog item ``replaced``, both with metadata ``{"category": "changed-<tag>"}``)
    and the ids deleted."""

    tag: str
    replaced: str
    alive: dict[str, bytes] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)

    @property
    def metadata(self) -> dict[str, str]:
        return {"category": f"changed-{self.tag}"}


def make_changes(client: httpx.Client, fx, tag: str, seed: int) -> Changes:
    """Put a new item ``<tag>-new``, replace the catalog item ``REPLACED[tag]``, delete the
    catalog item ``DELETED[tag]``, and put and delete ``<tag>-gone`` (new images from ``seed``
    to ``seed + 2``)."""
    ids = fx.item_ids()
    changes = Changes(tag, replaced=ids[REPLACED[tag]])
    for n, item_id in enumerate((f"{tag}-new", changes.replaced)):
        image = new_image(fx, seed + n)
        ok(put(client, item_id, image, changes.metadata))
        changes.alive[item_id] = image
    victim = ids[DELETED[tag]]
    ok(delete(client, victim))
    ok(put(client, f"{tag}-gone", new_image(fx, seed + 2)))      # a live item deleted
    ok(delete(client, f"{tag}-gone"))
    changes.deleted |= {victim, f"{tag}-gone"}
    return changes


def assert_changes_served(c: httpx.Client, changes: Changes, attribute: str) -> None:
    """Each item put is its own top-1 with the metadata it was put with, and no deleted one
    is listed."""
    for item_id, image in changes.alive.items():
        assert_own_top1(c, item_id, image, attribute)
        assert ok(c.get(f"/v1/items/{item_id}"))["metadata"] == changes.metadata
    assert not changes.deleted & set(all_ids(c))


# ---------------------------------------------------------------- put, replace, delete


def test_put_is_searchable_at_once(client, fx, attributes):
    n = ok(client.get("/readyz"))["items"]
    image = new_image(fx, 1)
    body = ok(put(client, "live-a", image, {"category": "live-test", "product_id": "p-live"}))
    assert body["op"] == "put" and body["replaced"] is False and body["seq"] >= 1
    assert body["item"]["metadata"] == {"category": "live-test", "product_id": "p-live"}
    for attribute in attributes:
        assert_own_top1(client, "live-a", image, attribute)
    assert [i for i, _ in search_ids(client, image, attributes[0], k=10,
                                     filters={"category": "live-test"})] == ["live-a"]
    item = ok(client.get("/v1/items/live-a"))
    assert item["metadata"]["product_id"] == "p-live"
    stored = client.get(item["image_url"])
    assert stored.status_code == 200 and stored.content == image
    by_item = ok(client.post("/v1/search/by-item", json={
        "item_id": "live-a", "attribute": attributes[1], "k": 3, "include_self": True}))
    assert by_item["results"][0]["id"] == "live-a"
    multi = ok(client.post("/v1/search/multi", files={"image": ("q.png", image, "image/png")},
                           data={"weights": json.dumps({a: 1 for a in attributes}), "k": "3"}))
    assert multi["results"][0]["id"] == "live-a"
    ids = all_ids(client)
    assert ids.count("live-a") == 1 and len(ids) == n + 1
    assert ok(client.get("/readyz"))["items"] == n + 1


def test_put_replaces_an_existing_item(client, fx, attributes):
    ids = all_ids(client)
    target = fx.item_ids()[REPLACED["replace"]]
    old_image = fx.image(target).read_bytes()
    image = new_image(fx, 2)
    body = ok(put(client, target, image, {"category": "replaced"}))
    assert body["replaced"] is True
    assert ok(client.get(f"/v1/items/{target}"))["metadata"] == {"category": "replaced"}
    assert_own_top1(client, target, image, attributes[0])
    everything = search_ids(client, old_image, attributes[0], k=100)
    assert [i for i, _ in everything].count(target) == 1
    assert len(everything) == len(ids)                    # replaced, not added
    assert sorted(all_ids(client)) == sorted(ids)


def test_delete_removes_it_from_every_result(client, fx, attributes):
    victim = fx.item_ids()[DELETED["delete"]]
    image = fx.image(victim).read_bytes()
    assert search_ids(client, image, attributes[0], k=1)[0][0] == victim
    body = ok(delete(client, victim))
    assert body["op"] == "delete" and body["seq"] >= 1
    error_of(client.get(f"/v1/items/{victim}"), 404, "item_not_found")
    error_of(client.get(f"/v1/items/{victim}/image"), 404, "item_not_found")
    error_of(client.post("/v1/search/by-item", json={
        "item_id": victim, "attribute": attributes[0]}), 404, "item_not_found")
    for attribute in attributes:
        assert victim not in [i for i, _ in search_ids(client, image, attribute, k=100)]
    multi = ok(client.post("/v1/search/multi", files={"image": ("q.png", image, "image/png")},
                           data={"weights": json.dumps({a: 1 for a in attributes}),
                                 "k": "100"}))
    assert victim not in [r["id"] for r in multi["results"]]
    assert victim not in all_ids(client)
    error_of(delete(client, victim), 404, "item_not_found")
    error_of(delete(client, "no-such-item"), 404, "item_not_found")
    # a live item can be deleted too
    ok(put(client, "live-gone", new_image(fx, 3)))
    ok(delete(client, "live-gone"))
    error_of(client.get("/v1/items/live-gone"), 404, "item_not_found")


def test_changes_survive_a_restart(client, server_env, fx, attributes):
    changes = make_changes(client, fx, "restart", seed=200)
    with ServerProcess(server_env) as srv:
        srv.wait("/readyz")
        with httpx.Client(base_url=srv.url, timeout=30.0) as fresh:
            assert_changes_served(fresh, changes, attributes[0])


# ---------------------------------------------------------------- replicas and concurrency


def test_two_replicas_see_each_others_changes(client, second_server, fx, attributes):
    with httpx.Client(base_url=second_server.url, timeout=30.0) as other:
        image = new_image(fx, 4)
        ok(put(client, "rep-1", image, {"category": "replica"}))
        assert_own_top1(other, "rep-1", image, attributes[2])        # at once, on the other
        ok(delete(other, "rep-1"))
        error_of(client.get("/v1/items/rep-1"), 404, "item_not_found")
        assert "rep-1" not in [i for i, _ in search_ids(client, image, attributes[2], k=100)]
        # both replicas put the same ids and their own, concurrently
        shared = [f"rep-shared-{n}" for n in range(6)]
        own = {c: [f"rep-{name}-{n}" for n in range(6)] for c, name in
               ((client, "a"), (other, "b"))}
        images = {i: new_image(fx, 100 + n) for n, i in
                  enumerate(shared + own[client] + own[other])}
        errors: list[str] = []

        def writer(c: httpx.Client) -> None:
            for item_id in shared + own[c]:
                resp = put(c, item_id, images[item_id], {"category": "replica"})
                if resp.status_code != 200:
                    errors.append(resp.text)

        threads = [threading.Thread(target=writer, args=(c,)) for c in (client, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        expected = set(images)
        for c in (client, other):
            ids = all_ids(c)
            counts = Counter(ids)
            assert not [i for i, n in counts.items() if n > 1], "doubled items"
            assert expected <= set(ids), expected - set(ids)
        for item_id in (shared[0], own[client][0], own[other][0]):
            assert_own_top1(other, item_id, images[item_id], attributes[0])
            assert_own_top1(client, item_id, images[item_id], attributes[0])
    assert "Traceback" not in second_server.log(), second_server.log()[-3000:]


def test_concurrent_puts_deletes_and_searches(client, second_server, fx, attributes):
    """Writers and readers on both replicas for STRESS_SECONDS: no error, nothing lost."""
    lock = threading.Lock()
    alive: dict[str, bytes] = {}
    deleted: set[str] = set()
    busy: set[str] = set()          # ids with a put or delete in flight (one at a time)
    errors: list[str] = []
    counts: Counter = Counter()
    stop = time.monotonic() + STRESS_SECONDS
    catalog_ids = [i for n, i in enumerate(fx.item_ids()) if n not in DELETED.values()]
    urls = [client.base_url, second_server.url]

    def check(resp: httpx.Response, what: str) -> None:
        if resp.status_code != 200:
            with lock:
                errors.append(f"{what}: {resp.status_code} {resp.text[:300]}")

    def putter(w: int) -> None:
        rng = random.Random(w)
        with httpx.Client(base_url=urls[w % 2], timeout=60.0) as c:
            n = 0
            for seq in itertools.count():      # a new image for every put: no two items tie
                if time.monotonic() >= stop:
                    break
                with lock:
                    mine = [i for i in alive if i.startswith(f"c{w}-") and i not in busy]
                    if mine and rng.random() < 0.25:           # replace one of its own
                        item_id = rng.choice(mine)
                    else:
                        item_id, n = f"c{w}-{n}", n + 1
                    busy.add(item_id)
                image = new_image(fx, 1000 + w * 10000 + seq)
                resp = put(c, item_id, image, {"category": "stress", "writer": str(w)})
                check(resp, f"put {item_id}")
                with lock:
                    if resp.status_code == 200:
                        alive[item_id] = image
                    busy.discard(item_id)
                    counts["put"] += 1

    def deleter() -> None:
        rng = random.Random(99)
        with httpx.Client(base_url=urls[1], timeout=60.0) as c:
            while time.monotonic() < stop:
                with lock:
                    victims = sorted(i for i in alive if i not in busy)
                    if len(victims) >= 4:
                        item_id = rng.choice(victims)
                        alive.pop(item_id)        # no putter writes it again from now on
                        deleted.add(item_id)
                        busy.add(item_id)
                if len(victims) < 4:
                    time.sleep(0.05)
                    continue
                check(delete(c, item_id), f"delete {item_id}")
                with lock:
                    busy.discard(item_id)
                    counts["delete"] += 1
                time.sleep(0.02)

    def searcher(w: int) -> None:
        rng = random.Random(500 + w)
        with httpx.Client(base_url=urls[w % 2], timeout=60.0) as c:
            while time.monotonic() < stop:
                kind = rng.randrange(3)
                if kind == 0:
                    item_id = rng.choice(catalog_ids)
                    resp = c.post("/v1/search", files={"image": (
                        "q.jpg", fx.image(item_id).read_bytes(), "image/jpeg")},
                        data={"attribute": rng.choice(attributes), "k": "20"})
                elif kind == 1:
                    resp = c.post("/v1/search/by-item", json={
                        "item_id": rng.choice(catalog_ids), "k": 20,
                        "weights": {a: 1 for a in attributes[:3]}})
                else:
                    resp = c.get("/v1/items", params={"offset": rng.randrange(60), "limit": 50})
                check(resp, f"search {kind}")
                if resp.status_code == 200 and kind < 2:
                    ids = [r["id"] for r in resp.json()["results"]]
                    if len(ids) != len(set(ids)):
                        with lock:
                            errors.append(f"doubled ids in a result: {ids}")
                with lock:
                    counts["search"] += 1

    threads = [threading.Thread(target=putter, args=(w,)) for w in range(2)]
    threads += [threading.Thread(target=deleter)]
    threads += [threading.Thread(target=searcher, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:10]
    assert counts["put"] > 10 and counts["delete"] > 3 and counts["search"] > 20, counts
    for url in urls:
        with httpx.Client(base_url=url, timeout=30.0) as c:
            ids = all_ids(c)
            assert len(ids) == len(set(ids)), "doubled items"
            assert set(alive) <= set(ids), f"lost: {sorted(set(alive) - set(ids))[:10]}"
            assert not deleted & set(ids), f"not deleted: {sorted(deleted & set(ids))[:10]}"
            for item_id in sorted(alive)[:3]:
                assert_own_top1(c, item_id, alive[item_id], attributes[0])
    for item_id in alive:                 # the index keeps its size for the other tests
        ok(delete(client, item_id))


# ---------------------------------------------------------------- folding with --update


def _reload(client) -> str:
    body = ok(client.post("/v1/admin/reload", headers=HEADERS))
    return body["index_version"]


def _check_folded(c: httpx.Client, alive: dict[str, bytes], deleted: set[str]) -> None:
    _reload(c)
    status = ok(c.get("/v1/admin/status", headers=HEADERS))
    assert status["live"]["pending"] == 0 and status["live"]["live_items"] == 0, status
    ids = all_ids(c)
    assert len(ids) == len(set(ids))
    assert set(alive) <= set(ids), sorted(set(alive) - set(ids))[:10]
    assert not deleted & set(ids)


def test_update_folds_the_journal_and_loses_no_put_made_during_it(
        client, second_server, fx, live_index, attributes):
    changes = make_changes(client, fx, "fold", seed=300)
    before = ok(client.get("/readyz"))["index_version"]
    assert journal_entries(live_index) > 0
    during: dict[str, bytes] = {}
    errors: list[str] = []
    done = threading.Event()

    def put_during_update() -> None:
        with httpx.Client(base_url=second_server.url, timeout=60.0) as c:
            n = 0
            while not done.is_set() or n < 3:
                item_id, image = f"during-{n}", new_image(fx, 90_000 + n)
                resp = put(c, item_id, image, {"category": "during"})
                if resp.status_code == 200:
                    during[item_id] = image
                else:
                    errors.append(resp.text)
                n += 1

    writer = threading.Thread(target=put_during_update)
    writer.start()
    try:
        run_indexer(fx.catalog, fx.checkpoint, live_index, "--update")
    finally:
        done.set()
        writer.join()
    assert not errors, errors
    layer = read_layer(live_index.resolve())
    assert {i for i in during if i in layer}, "no put landed before the fold's snapshot"
    assert journal_entries(live_index) >= 3, "the puts after the fold are pending"
    assert _reload(client) != before
    alive = {**changes.alive, **during}
    for item_id in sorted(during)[-2:]:            # puts at the end came after the fold
        assert_own_top1(client, item_id, during[item_id], attributes[0])
    # a second update with no writes folds the rest: the journal is empty
    run_indexer(fx.catalog, fx.checkpoint, live_index, "--update")
    assert journal_entries(live_index) == 0
    with httpx.Client(base_url=second_server.url, timeout=30.0) as other:
        for c in (client, other):
            _check_folded(c, alive, changes.deleted)
    manifest = json.loads((live_index / "manifest.json").read_text())
    assert manifest["live"]["folded_seq"] > 0
    assert manifest["catalog"]["items"] == len(all_ids(client))
    for item_id in ["fold-new", changes.replaced, *sorted(during)[:2]]:
        assert_own_top1(client, item_id, alive[item_id], attributes[0])
    for item_id in during:   # hundreds: the index keeps its size (a search sees 100 items)
        ok(delete(client, item_id))


def test_folded_changes_stay_after_more_updates_and_a_restart(
        client, second_server, server_env, fx, live_index, attributes):
    changes = make_changes(client, fx, "kept", seed=400)
    run_indexer(fx.catalog, fx.checkpoint, live_index, "--update")     # folds the changes
    run_indexer(fx.catalog, fx.checkpoint, live_index, "--update")     # and one more
    assert journal_entries(live_index) == 0
    # the stored images are exactly those of the live puts still in the layer
    layer = read_layer(live_index.resolve())
    assert {i for i, e in layer.items() if e.op == "put"} >= set(changes.alive) - set(
        fx.item_ids())
    assert {p.name for p in Journal.of(live_index).images.iterdir()} == {
        e.image for e in layer.values() if e.op == "put"}
    # the module's replicas load the new version (the journal dropped what theirs needs)
    with httpx.Client(base_url=second_server.url, timeout=30.0) as other:
        for c in (client, other):
            _reload(c)
    with ServerProcess(server_env) as srv:
        srv.wait("/readyz")
        with httpx.Client(base_url=srv.url, timeout=30.0) as fresh:
            assert_changes_served(fresh, changes, attributes[0])
            image = fresh.get(ok(fresh.get("/v1/items/kept-new"))["image_url"])
            assert image.status_code == 200 and image.content == changes.alive["kept-new"]


# ---------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_4xx(client, fx, server):
    image = new_image(fx, 5)
    error_of(put(client, "bad-1", image, headers={}), 401, "unauthorized")
    error_of(put(client, "bad-1", image, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    error_of(client.delete("/v1/admin/items/live-a"), 401, "unauthorized")
    assert put(client, "bad-1", b"\xff\xd8\xff\xe0 not really a jpeg").status_code in (415, 422)
    error_of(put(client, "bad-1", image[: len(image) // 2]), 422, "corrupt_image")
    error_of(put(client, "bad-1", b"just text"), 415, "unsupported_media_type")
    error_of(put(client, "bad-1", b""), 422, "empty_image")
    resp = client.put("/v1/admin/items/bad-1", files={"image": ("x.png", image, "image/png")},
                      data={"metadata": "{not json"}, headers=HEADERS)
    error_of(resp, 422, "validation_error")
    resp = client.put("/v1/admin/items/bad-1", files={"image": ("x.png", image, "image/png")},
                      data={"metadata": "[1, 2]"}, headers=HEADERS)
    error_of(resp, 422, "validation_error")
    error_of(put(client, "bad-1", image, {"id": "other"}), 422, "validation_error")
    resp = client.put("/v1/admin/items/bad-1", data={"metadata": "{}"}, headers=HEADERS)
    error_of(resp, 422, "validation_error")                  # no image
    error_of(put(client, "x" * 600, image), 422, "validation_error")
    error_of(client.get("/v1/items/bad-1"), 404, "item_not_found")  # nothing kept
    assert "Traceback" not in server.log(), server.log()[-3000:]
