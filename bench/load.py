"""Load test of the search API: latency percentiles, throughput, errors, batching on vs off.

    python bench/load.py [--config cpu | --checkpoint CKPT] [--duration 10] [--json OUT]
    python bench/load.py --url http://127.0.0.1:8000 --attribute neckline --image q.jpg

By default it builds a small synthetic catalog, a randomly initialised checkpoint of the
given configuration (weights do not change timings) and its index with `python -m indexer`,
then starts `python -m service` on a loopback port twice, with micro-batching off
(ASEN_BATCH_MAX_SIZE=1) and on, and drives POST /v1/search at concurrency 1, 4 and 16 for a
fixed time each (bounded by --max-requests). Then, on each server, it compares the
single-query latency over HTTP with the bare model forward (`Embedder.embed` on the same
decoded image and attribute, in this process, server idle), interleaved in rounds so both see
the same machine load, and the latency of a query on --multi-attributes attributes
(POST /v1/search/multi, one trunk pass for all of them) against a 1-attribute query, also
interleaved. With --url it measures that server only (no bare-forward comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from benchkit import ServerProcess, run_indexer


@dataclass
class LevelResult:
    """One (mode, concurrency) run."""

    mode: str
    concurrency: int
    seconds: float
    requests: int
    ok: int
    errors: int
    shed_503: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float | None
    server_embed_ms_p50: float | None
    server_queue_ms_p50: float | None
    statuses: dict[str, int] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def drive(url: str, image: bytes, attribute: str, concurrency: int, duration: float,
                max_requests: int, headers: dict[str, str]) -> tuple[list, Counter, float, list]:
    """Closed-loop load: ``concurrency`` clients each send the next query when one returns."""
    latencies: list[float] = []
    server_timings: list[dict] = []
    statuses: Counter = Counter()
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits,
                                 headers=headers) as client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration

        async def worker() -> None:
            nonlocal issued
            while loop.time() < deadline and issued < max_requests:
                issued += 1
                t0 = time.perf_counter()
                try:
                    resp = await client.post(
                        "/v1/search", files={"image": ("q.jpg", image, "image/jpeg")},
                        data={"attribute": attribute, "k": "10"})
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                elapsed = (time.perf_counter() - t0) * 1000.0
                statuses[str(resp.status_code)] += 1
                if resp.status_code == 200:
                    latencies.append(elapsed)
                    server_timings.append(resp.json()["timings"])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, statuses, wall, server_timings


def measure_level(url: str, mode: str, image: bytes, attribute: str, concurrency: int,
                  duration: float, max_requests: int, headers: dict[str, str]) -> LevelResult:
    """Warm up, then one timed run; batch sizes from the server's Prometheus counters."""
    asyncio.run(drive(url, image, attribute, concurrency, 1.0, 4 * concurrency, headers))
    before = httpx.get(url + "/metrics", timeout=10).text
    lat, statuses, wall, timings = asyncio.run(
        drive(url, image, attribute, concurrency, duration, max_requests, headers))
    after = httpx.get(url + "/metrics", timeout=10).text
    n_batches = _metric(after, "asen_batch_size_count") - _metric(before, "asen_batch_size_count")
    n_images = _metric(after, "asen_batch_size_sum") - _metric(before, "asen_batch_size_sum")
    total = sum(statuses.values())
    ok = statuses.get("200", 0)
    embed = [t["embed_ms"] for t in timings if t.get("embed_ms") is not None]
    queue = [t["queue_ms"] for t in timings if t.get("queue_ms") is not None]
    return LevelResult(
        mode=mode, concurrency=concurrency, seconds=round(wall, 2), requests=total, ok=ok,
        errors=total - ok, shed_503=statuses.get("503", 0),
        throughput_rps=round(ok / wall, 2) if wall else 0.0,
        p50_ms=round(percentile(lat, 50), 2), p95_ms=round(percentile(lat, 95), 2),
        p99_ms=round(percentile(lat, 99), 2),
        mean_batch=round(n_images / n_batches, 2) if n_batches else None,
        server_embed_ms_p50=round(statistics.median(embed), 2) if embed else None,
        server_queue_ms_p50=round(statistics.median(queue), 2) if queue else None,
        statuses=dict(statuses),
    )


def load_bare(checkpoint: Path):
    """The embedder for the bare-forward baseline (in this process, on the CPU)."""
    from model import load_model

    return load_model(checkpoint, device="cpu")


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class KeepAliveClient:
    """Sequential POSTs of one prepared multipart body on one keep-alive HTTP/1.1 connection
    (the standard library's http.client): a client whose own cost per request is small, so
    that the single-query latency is the service's. httpx's own work per request (building
    the multipart body, its pure-Python HTTP/1.1 parser) shows in the table's httpx column."""

    def __init__(self, url: str, path: str, files: dict, data: dict[str, str],
                 headers: dict[str, str]) -> None:
        request = httpx.Request("POST", url.rstrip("/") + path, files=files, data=data,
                                headers=headers)
        self.body = request.read()
        self.headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        self.path = path
        parts = httpx.URL(url)
        self.conn = http.client.HTTPConnection(parts.host, parts.port, timeout=60.0)

    def post(self) -> tuple[int, bytes]:
        """Send the body once: (status, response body)."""
        self.conn.request("POST", self.path, body=self.body, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


def single_query(url: str, emb, image: bytes, attribute: str, rounds: int, per_round: int,
                 headers: dict[str, str], server_pid: int | None = None) -> dict:
    """Service latency at concurrency 1 vs the bare forward, interleaved in rounds so that
    both see the same machine load: each round sends ``per_round`` sequential queries from a
    lean keep-alive client (:class:`KeepAliveClient`; server otherwise idle) and as many from
    httpx, then runs ``per_round`` bare ``Embedder.embed`` calls on the same decoded image
    and attribute (server idle), and the same with decoding included. Also the CPU time per
    query of the server process vs of the bare call (lean client's queries), which a busy
    machine disturbs much less than wall time."""
    import torch

    from model.imageio import open_image

    img = open_image(image)
    service, with_httpx, forward, with_decode, server_total = [], [], [], [], []
    stages: dict[str, list[float]] = {"decode_ms": [], "embed_ms": [], "search_ms": []}
    server_cpu = bare_cpu = 0.0
    files = {"image": ("q.jpg", image, "image/jpeg")}
    data = {"attribute": attribute, "k": "10"}
    lean = KeepAliveClient(url, "/v1/search", files, data, headers)
    with httpx.Client(base_url=url, timeout=60.0, headers=headers) as client:
        def query() -> dict:
            status, body = lean.post()
            if status != 200:
                raise RuntimeError(f"POST /v1/search answered {status}: {body[:300]!r}")
            return json.loads(body)

        def query_httpx() -> httpx.Response:
            return client.post("/v1/search", files=files, data=data)

        for _ in range(5):
            query()
            query_httpx()
            emb.embed([img], [attribute])
        for _ in range(rounds):
            cpu0 = process_cpu_seconds(server_pid) if server_pid else 0.0
            for _ in range(per_round):
                t0 = time.perf_counter()
                answer = query()
                service.append((time.perf_counter() - t0) * 1000.0)
                timings = answer["timings"]
                server_total.append(timings["total_ms"])
                for name, values in stages.items():
                    values.append(timings[name])
            if server_pid:
                server_cpu += process_cpu_seconds(server_pid) - cpu0
            for _ in range(per_round):
                t0 = time.perf_counter()
                query_httpx().raise_for_status()
                with_httpx.append((time.perf_counter() - t0) * 1000.0)
            cpu0 = time.process_time()
            for _ in range(per_round):
                t0 = time.perf_counter()
                emb.embed([img], [attribute])
                forward.append((time.perf_counter() - t0) * 1000.0)
            bare_cpu += time.process_time() - cpu0
            for _ in range(per_round):
                t0 = time.perf_counter()
                emb.embed([open_image(image)], [attribute])
                with_decode.append((time.perf_counter() - t0) * 1000.0)
    lean.close()
    n = len(service)
    out: dict = {
        "n": n, "torch_threads": torch.get_num_threads(),
        "service_p50_ms": round(percentile(service, 50), 2),
        "service_httpx_p50_ms": round(percentile(with_httpx, 50), 2),
        "service_inside_p50_ms": round(percentile(server_total, 50), 2),
        "bare_embed_p50_ms": round(percentile(forward, 50), 2),
        "bare_decode_embed_p50_ms": round(percentile(with_decode, 50), 2),
        "bare_cpu_ms_per_query": round(bare_cpu / n * 1000.0, 2),
        # where the service's time goes (p50 of each stage in the responses' timings)
        **{f"server_{name[:-3]}_p50_ms": round(percentile(values, 50), 2)
           for name, values in stages.items()},
        "outside_route_p50_ms": round(percentile(
            [a - b for a, b in zip(service, server_total, strict=True)], 50), 2),
    }
    out["service_vs_bare"] = round(out["service_p50_ms"] / out["bare_embed_p50_ms"], 3)
    if server_pid:
        out["server_cpu_ms_per_query"] = round(server_cpu / n * 1000.0, 2)
        out["cpu_service_vs_bare"] = round(server_cpu / bare_cpu, 3) if bare_cpu else None
    return out


def attribute_scaling(url: str, image: bytes, attribute: str, n_attributes: int, rounds: int,
                      per_round: int, headers: dict[str, str]) -> dict:
    """Sequential latency of an ``n_attributes``-attribute query (/v1/search/multi, equal
    weights, ``attribute`` first) against a 1-attribute query (/v1/search), interleaved in
    rounds so both see the same machine load; p50 over HTTP and inside the service."""
    with httpx.Client(base_url=url, timeout=60.0, headers=headers) as client:
        names = [a["name"] for a in client.get("/v1/attributes").raise_for_status()
                 .json()["attributes"]]
        chosen = [attribute] + [a for a in names if a != attribute][:n_attributes - 1]
        weights = json.dumps({a: 1.0 for a in chosen})
        files = {"image": ("q.jpg", image, "image/jpeg")}

        def one() -> httpx.Response:
            return client.post("/v1/search", files=files, data={"attribute": attribute,
                                                                "k": "10"})

        def many() -> httpx.Response:
            return client.post("/v1/search/multi", files=files, data={"weights": weights,
                                                                      "k": "10"})

        samples: dict[str, dict[str, list[float]]] = {
            "one": {"http": [], "inside": [], "embed": []},
            "many": {"http": [], "inside": [], "embed": []}}
        for _ in range(3):   # warm-up
            one()
            many()
        for _ in range(rounds):
            for key, fn in (("one", one), ("many", many)):
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    resp = fn().raise_for_status()
                    samples[key]["http"].append((time.perf_counter() - t0) * 1000.0)
                    t = resp.json()["timings"]
                    samples[key]["inside"].append(t["total_ms"])
                    samples[key]["embed"].append(t["embed_ms"])
    out: dict = {"attributes": chosen, "n": rounds * per_round}
    for key in ("one", "many"):
        for what, values in samples[key].items():
            out[f"{key}_{what}_p50_ms"] = round(percentile(values, 50), 2)
    for what in ("http", "inside", "embed"):
        out[f"ratio_{what}"] = round(out[f"many_{what}_p50_ms"] / out[f"one_{what}_p50_ms"], 3)
    return out


def build_setup(work: Path, config: str, checkpoint: Path | None, n_items: int) -> dict:
    """Synthetic catalog + checkpoint + index (built by the real indexer CLI)."""
    from model import build_model, save_checkpoint
    from model.training.data import read_attributes
    from model.training.synth import generate

    data = work / "data"
    generate(data, seed=0, n_train=n_items, n_valid=2, n_test=8, size=256)
    if checkpoint is None:
        checkpoint = work / f"random-{config}.pt"
        save_checkpoint(build_model(config, read_attributes(data)), checkpoint)
    index_dir = work / "index"
    t0 = time.perf_counter()
    run_indexer(data / "catalog.csv", checkpoint, index_dir)
    print(f"  indexed {n_items + 10} items in {time.perf_counter() - t0:.1f}s", flush=True)
    query = data / "images" / "test" / "000000.jpg"
    return {"index_dir": index_dir, "checkpoint": checkpoint, "image": query.read_bytes()}


def markdown(results: list[LevelResult], single: dict[str, dict],
             scaling: dict[str, dict] | None = None) -> str:
    """The results as Markdown tables."""
    lines = [
        "| batching | concurrency | requests | errors | throughput (req/s) | p50 ms | p95 ms "
        "| p99 ms | mean batch | server embed p50 ms | server queue p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.concurrency} | {r.requests} | {r.errors} | {r.throughput_rps} | "
            f"{r.p50_ms} | {r.p95_ms} | {r.p99_ms} | {r.mean_batch} | "
            f"{r.server_embed_ms_p50} | {r.server_queue_ms_p50} |")
    if single:
        lines += ["", "| batching | service p50 ms (HTTP) | service p50 ms (httpx client) "
                  "| inside the service p50 ms "
                  "| bare `embed` p50 ms | bare decode + `embed` p50 ms | service / bare "
                  "| CPU ms/query service | CPU ms/query bare | CPU service / bare |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for mode, s in single.items():
            lines.append(f"| {mode} | {s['service_p50_ms']} | {s['service_httpx_p50_ms']} | "
                         f"{s['service_inside_p50_ms']} | "
                         f"{s['bare_embed_p50_ms']} | {s['bare_decode_embed_p50_ms']} | "
                         f"{s['service_vs_bare']:.2f}x | {s.get('server_cpu_ms_per_query')} | "
                         f"{s['bare_cpu_ms_per_query']} | {s.get('cpu_service_vs_bare')}x |")
        lines += ["", "| batching | server decode + preprocess p50 ms | server forward p50 ms "
                  "| server search p50 ms | outside the route p50 ms (HTTP, form, response) |",
                  "|---|---:|---:|---:|---:|"]
        for mode, s in single.items():
            lines.append(f"| {mode} | {s['server_decode_p50_ms']} | {s['server_embed_p50_ms']} "
                         f"| {s['server_search_p50_ms']} | {s['outside_route_p50_ms']} |")
    if scaling:
        lines += ["", "| batching | attributes | 1-attr p50 ms (HTTP) | multi p50 ms (HTTP) "
                  "| ratio HTTP | ratio inside | ratio embed |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for mode, s in scaling.items():
            lines.append(f"| {mode} | {', '.join(s['attributes'])} | {s['one_http_p50_ms']} | "
                         f"{s['many_http_p50_ms']} | {s['ratio_http']:.2f}x | "
                         f"{s['ratio_inside']:.2f}x | {s['ratio_embed']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="measure this running server only (no spawning)")
    p.add_argument("--image", type=Path, help="query image (default: a synthetic test image)")
    p.add_argument("--attribute", default="neckline")
    p.add_argument("--config", default="cpu", help="random checkpoint config (default cpu)")
    p.add_argument("--checkpoint", type=Path, help="use this checkpoint instead")
    p.add_argument("--items", type=int, default=200, help="synthetic catalog size (200)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level (10)")
    p.add_argument("--max-requests", type=int, default=5000, help="cap per level (5000)")
    p.add_argument("--batch-max-size", type=int, default=16)
    p.add_argument("--batch-max-wait-ms", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=10,
                   help="single-query and multi-attribute rounds (10; 0: skip both)")
    p.add_argument("--per-round", type=int, default=10, help="queries per round (10)")
    p.add_argument("--multi-attributes", type=int, default=3, metavar="N",
                   help="compare an N-attribute query with a 1-attribute one (3; 0: skip)")
    p.add_argument("--api-key", default=os.environ.get("ASEN_API_KEY"))
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the spawned servers only (repeatable; "
                   "the bare embed keeps this process's environment)")
    p.add_argument("--json", type=Path, help="write all numbers here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    args = p.parse_args(argv)
    for c in args.concurrency:
        if not 1 <= c <= 256:
            p.error("concurrency must be 1..256")
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    server_env = {}
    for pair in args.server_env:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            p.error(f"--server-env {pair!r}: expected NAME=VALUE")
        server_env[name] = value

    results: list[LevelResult] = []
    single: dict[str, dict] = {}
    scaling: dict[str, dict] = {}
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_avg_before": os.getloadavg()}
    if args.url:
        if not args.image:
            p.error("--url needs --image")
        image = args.image.read_bytes()
        for c in args.concurrency:
            r = measure_level(args.url.rstrip("/"), "as-configured", image, args.attribute, c,
                              args.duration, args.max_requests, headers)
            print(json.dumps(asdict(r)), flush=True)
            results.append(r)
        if args.multi_attributes > 1 and args.rounds > 0:
            scaling["as-configured"] = attribute_scaling(
                args.url.rstrip("/"), image, args.attribute, args.multi_attributes,
                args.rounds, args.per_round, headers)
            print(json.dumps({"attribute_scaling": "as-configured",
                              **scaling["as-configured"]}), flush=True)
    else:
        with tempfile.TemporaryDirectory(prefix="asen-load-") as tmp:
            print("building catalog, checkpoint and index ...", flush=True)
            setup = build_setup(Path(tmp), args.config, args.checkpoint, args.items)
            image = args.image.read_bytes() if args.image else setup["image"]
            emb = load_bare(setup["checkpoint"])
            modes = {"off": {"ASEN_BATCH_MAX_SIZE": "1"},
                     "on": {"ASEN_BATCH_MAX_SIZE": str(args.batch_max_size),
                            "ASEN_BATCH_MAX_WAIT_MS": str(args.batch_max_wait_ms)}}
            for mode, env in modes.items():
                srv = ServerProcess({"ASEN_INDEX_DIR": str(setup["index_dir"]),
                                     "ASEN_RELOAD_INTERVAL_S": "0", "ASEN_QUEUE_MAX": "256",
                                     **({"ASEN_API_KEY": args.api_key} if args.api_key else {}),
                                     **server_env, **env}, log_dir=Path(tmp))
                with srv:
                    srv.wait(timeout=300)
                    for c in args.concurrency:
                        r = measure_level(srv.url, mode, image, args.attribute, c,
                                          args.duration, args.max_requests, headers)
                        print(json.dumps(asdict(r)), flush=True)
                        results.append(r)
                    if args.rounds > 0:
                        single[mode] = single_query(srv.url, emb, image, args.attribute,
                                                    args.rounds, args.per_round, headers,
                                                    server_pid=srv.proc.pid if srv.proc else None)
                        print(json.dumps({"single_query": mode, **single[mode]}), flush=True)
                    if args.multi_attributes > 1 and args.rounds > 0:
                        scaling[mode] = attribute_scaling(
                            srv.url, image, args.attribute, args.multi_attributes,
                            args.rounds, args.per_round, headers)
                        print(json.dumps({"attribute_scaling": mode, **scaling[mode]}),
                              flush=True)
    info["load_avg_after"] = os.getloadavg()
    table = markdown(results, single, scaling)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"info": info, "args": {
            k: str(v) for k, v in vars(args).items() if k != "api_key"},
            "levels": [asdict(r) for r in results], "single_query": single,
            "attribute_scaling": scaling}, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
