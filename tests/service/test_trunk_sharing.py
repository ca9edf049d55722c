"""One global-trunk pass per uploaded image, preprocessing off the inference thread.

The service runs in this process (real uvicorn on a loopback port, real tiny model, real
FAISS index) so that a forward hook on the model's global trunk can count its passes and a
wrapper around the preprocessor (which calls the real one) can see which thread runs it.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

import httpx
import pytest
from testkit import InProcessServer

from indexer.items import Item
from model.imageio import open_image
from service.app import create_app
from service.protocols import CatalogIndexLike, EmbedderLike
from service.settings import Settings


@pytest.fixture(scope="module")
def live(fx):
    """The app on a real uvicorn in this process: (app, url)."""
    settings = Settings(index_dir=fx.index_dir, reload_interval_s=0, log_level="warning")
    with InProcessServer(create_app(settings)) as server:
        yield server.app, server.url


class Probe:
    """Trunk passes (images per pass, thread) and the threads that preprocess."""

    def __init__(self, embedder):
        self.trunk: list[tuple[int, str]] = []
        self.preprocess_threads: list[str] = []
        trunk = embedder.net.choices["global"].basenet
        self._hook = trunk.register_forward_hook(self._on_trunk)
        self._embedder = embedder
        self._real = embedder.preprocess

        def preprocess(image):
            self.preprocess_threads.append(threading.current_thread().name)
            return self._real(image)

        embedder.preprocess = preprocess

    def _on_trunk(self, module, inputs, output) -> None:
        self.trunk.append((int(inputs[0].shape[0]), threading.current_thread().name))

    def images_through_trunk(self) -> int:
        return sum(n for n, _ in self.trunk)

    def close(self) -> None:
        self._hook.remove()
        self._embedder.preprocess = self._real


@pytest.fixture
def probe(live):
    app, _ = live
    p = Probe(app.state.service.snapshot.embedder)
    yield p
    p.close()


def jpeg(fx, item_id):
    return fx.image(item_id).read_bytes()


def test_multi_attribute_query_runs_the_trunk_once(live, probe, fx):
    _, url = live
    weights = {"neckline": 1, "colour": 1, "pattern": 1}
    r = httpx.post(url + "/v1/search/multi", timeout=60,
                   files={"image": ("q.jpg", jpeg(fx, "test-000001"), "image/jpeg")},
                   data={"weights": json.dumps(weights), "k": "3"})
    assert r.status_code == 200, r.text
    assert probe.images_through_trunk() == 1, probe.trunk     # not once per attribute (3)
    assert len(probe.preprocess_threads) == 1
    trunk_threads = {t for _, t in probe.trunk}
    assert all(t.startswith("asen-infer") for t in trunk_threads), trunk_threads
    # a lone query is decoded and preprocessed on the inference thread, one hand-off
    # (MicroBatcher.alone); a crowd's are in the decode pool (the composed test below)
    assert set(probe.preprocess_threads) <= trunk_threads


def test_composed_query_runs_the_trunk_once_per_upload(live, probe, fx):
    _, url = live
    refs = [{"attribute": "neckline", "weight": 1, "image": 0},
            {"attribute": "colour", "weight": 1, "image": 1},
            {"attribute": "sleeve_length", "weight": 1, "image": 0},
            {"attribute": "pattern", "weight": 1, "image": 1},
            {"attribute": "hem_length", "weight": 1, "item_id": "train-000004"}]
    r = httpx.post(url + "/v1/search/compose", timeout=60,
                   files=[("images", ("a.jpg", jpeg(fx, "test-000002"), "image/jpeg")),
                          ("images", ("b.jpg", jpeg(fx, "train-000009"), "image/jpeg"))],
                   data={"references": json.dumps(refs), "k": "4"})
    assert r.status_code == 200, r.text
    assert probe.images_through_trunk() == 2, probe.trunk     # 2 uploads, 4 image attributes
    assert len(probe.trunk) == 1                              # in one forward pass
    assert Counter(probe.preprocess_threads).total() == 2
    assert not set(probe.preprocess_threads) & {t for _, t in probe.trunk}


def test_concurrent_queries_share_passes_one_trunk_row_per_image(live, probe, fx):
    _, url = live
    weights = json.dumps({"neckline": 1, "colour": 2})
    statuses: list[int] = []

    def one(item_id: str) -> None:
        r = httpx.post(url + "/v1/search/multi", timeout=60,
                       files={"image": ("q.jpg", jpeg(fx, item_id), "image/jpeg")},
                       data={"weights": weights, "k": "2"})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=one, args=(f"train-{i:06d}",)) for i in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 6
    assert probe.images_through_trunk() == 6, probe.trunk     # 6 images, 12 embeddings


def test_shared_trunk_gives_the_per_attribute_embeddings(live, fx):
    """The shared path (one trunk pass, rows per attribute) equals embedding each
    (image, attribute) pair on its own."""
    app, _ = live
    emb = app.state.service.snapshot.embedder
    images = [open_image(fx.image(i)) for i in ("test-000003", "train-000012")]
    wanted = [["colour", "neckline", "pattern"], ["sleeve_length"]]
    shared = emb.embed_each_prepared([emb.preprocess(im) for im in images], wanted)
    for image, attrs, got in zip(images, wanted, shared, strict=True):
        alone = emb.embed([image] * len(attrs), attrs)
        assert got.shape == alone.shape
        assert abs(got - alone).max() < 1e-5


def test_served_index_and_model_satisfy_the_service_protocols(live):
    app, _ = live
    snap = app.state.service.snapshot
    assert isinstance(snap.index, CatalogIndexLike)
    assert isinstance(snap.embedder, EmbedderLike)
    assert isinstance(snap.index.get("train-000001"), Item)


def test_explain_preprocesses_off_the_inference_thread(live, probe, fx):
    _, url = live
    r = httpx.post(url + "/v1/explain", timeout=60, data={"attribute": "colour"},
                   files={"image": ("q.jpg", jpeg(fx, "test-000004"), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert len(probe.preprocess_threads) == 1 and len(probe.trunk) == 1
    assert probe.preprocess_threads[0] != probe.trunk[0][1]
    assert probe.trunk[0][1].startswith("asen-infer")
