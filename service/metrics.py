"""Prometheus metrics of one app instance (own registry, so several apps can coexist)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Requests, per-stage latency, batch sizes, queue depth, index sizes and rejects.

    Every metric is recorded through the ``record_*`` / ``set_*`` methods here: a request's
    route, status, latency and stage timings by :class:`~service.middleware.
    RequestContextMiddleware` once it is answered (routes only hand over their timings), error
    codes by the error renderer, forward passes and the queue depth by the batcher's
    callbacks, index loads by the reloader, the index sizes and staleness (live changes
    included) by the /metrics endpoint before each scrape.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "asen_http_requests_total", "HTTP requests by route template and status.",
            ["method", "route", "status"], registry=r,
        )
        self.request_latency = Histogram(
            "asen_http_request_duration_seconds", "Request latency by route template.",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.stage_latency = Histogram(
            "asen_stage_duration_seconds",
            "Latency of each query stage (decode, queue, embed, search, explain) per request, "
            "and of each model forward pass (forward).",
            ["stage"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "asen_batch_size", "Images per model forward pass.", buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "asen_queue_depth", "Queries admitted and not finished (waiting or running).",
            registry=r,
        )
        self.index_items = Gauge(
            "asen_index_items", "Searchable items of each attribute, live changes included.",
            ["attribute"], registry=r,
        )
        self.live_stale = Gauge(
            "asen_live_stale", "1 while the served index version is stale (the live-changes "
            "journal dropped changes it needs).", registry=r,
        )
        self.rejects = Counter(
            "asen_rejected_requests_total", "Requests answered with an error, by error code.",
            ["code"], registry=r,
        )
        self.reloads = Counter(
            "asen_index_reloads_total", "Index (re)load attempts by outcome.", ["result"],
            registry=r,
        )
        self.ready = Gauge("asen_ready", "1 when a model and an index are loaded.", registry=r)
        self.index_info = Gauge(
            "asen_index_info", "Currently served index and model versions (value 1).",
            ["index_version", "model_version"], registry=r,
        )
        self.model_precision = Gauge(
            "asen_model_precision", "The precision the served model runs in (value 1), and "
            "the one asked for (ASEN_PRECISION; auto resolves at load).",
            ["requested", "precision"], registry=r,
        )

    def record_request(self, method: str, route: str, status: int, seconds: float,
                       stages: Mapping[str, float | None] | None = None) -> None:
        """One answered request: count, latency, and its stages (milliseconds)."""
        self.requests.labels(method, route, str(status)).inc()
        self.request_latency.labels(method, route).observe(seconds)
        for stage, ms in (stages or {}).items():
            self.observe_stage(stage, ms)

    def record_reject(self, code: str) -> None:
        """An error response, by its error code."""
        self.rejects.labels(code).inc()

    def record_forward(self, size: int, ms: float) -> None:
        """One model forward pass of ``size`` images."""
        self.batch_size.observe(size)
        self.observe_stage("forward", ms)

    def record_reload(self, success: bool) -> None:
        """An index load attempt."""
        self.reloads.labels("success" if success else "failure").inc()

    def set_queue_depth(self, depth: int) -> None:
        """Queries admitted and not finished."""
        self.queue_depth.set(depth)

    def observe_stage(self, stage: str, ms: float | None) -> None:
        """Record a stage duration given in milliseconds."""
        if ms is not None:
            self.stage_latency.labels(stage).observe(ms / 1000.0)

    def set_index(self, sizes: dict[str, int], index_version: str, model_version: str) -> None:
        """Publish the sizes and versions of a newly served index."""
        self.index_items.clear()
        for name, n in sizes.items():
            self.index_items.labels(name).set(n)
        self.index_info.clear()
        self.index_info.labels(index_version, model_version).set(1)
        self.ready.set(1)

    def set_precision(self, requested: str, chosen: str) -> None:
        """The served model's precision (``chosen``) and ASEN_PRECISION (``requested``)."""
        self.model_precision.clear()
        self.model_precision.labels(requested, chosen).set(1)

    def set_live(self, sizes: Mapping[str, int], stale: bool | None) -> None:
        """The served index's sizes and staleness now (refreshed at every scrape, so live
        changes of every replica count; ``stale`` None: an index without live changes)."""
        self.index_items.clear()
        for name, n in sizes.items():
            self.index_items.labels(name).set(n)
        self.live_stale.set(1 if stale else 0)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
