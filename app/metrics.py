"""Prometheus metrics: requests by route and status, latency, batch sizes, queue depth, label cache,
model version, GPU memory. What belongs to one model (its queue, its batches, its batch cap and
out-of-memory splits, its version, its reload) carries a `model` label; GPU memory (through NVML, and
absent without it) a `gpu` label. One registry per app, so tests (and several apps in one process)
never share counts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.runtime.gpu_memory import GpuMemory

if TYPE_CHECKING:
    from app.runtime.engine import Engine

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _State(Collector):
    """Values read at scrape time from the objects that own them."""

    def __init__(self, engine: Engine) -> None:
        self.models, self.cache = engine.models, engine.cache
        self.text_lane = engine.text_lane
        self.engine = engine
        self.gpu = GpuMemory()

    def _per_model(self) -> Iterable[Metric]:
        """The queue counters and gauges of each model's batcher, labelled by model."""
        counters = (
            ("zeroshot_queue_rejected", "requests refused with 503 because the queue was full", "rejected"),
            (
                "zeroshot_queue_expired",
                "requests dropped after their deadline passed in the queue",
                "expired",
            ),
            (
                "zeroshot_queue_cancelled",
                "queued image batches dropped unencoded because their client went away",
                "cancelled",
            ),
            (
                "zeroshot_encoder_oom",
                "out-of-memory errors of the image encoder (each split its batch in halves, or at one "
                "image failed it)",
                "oom_errors",
            ),
        )
        for name, doc, attr in counters:
            c = CounterMetricFamily(name, doc, labels=["model"])
            for m in self.models:
                c.add_metric([m.name], getattr(m.batcher, attr))
            yield c
        q = GaugeMetricFamily(
            "zeroshot_queue_depth", "images admitted and waiting for the image encoder", labels=["model"]
        )
        info = GaugeMetricFamily(
            "zeroshot_model_info",
            "the bundle served (value 1)",
            labels=["model", "name", "version", "sha256", "provider"],
        )
        up = GaugeMetricFamily("zeroshot_model_loaded", "1 when a model is loaded and warm", labels=["model"])
        err = GaugeMetricFamily(
            "zeroshot_reload_failing", "1 while the last reload attempt failed", labels=["model"]
        )
        cap = GaugeMetricFamily(
            "zeroshot_batch_cap",
            "the most images an image-encoder batch holds now (below max_batch after an out-of-memory error)",
            labels=["model"],
        )
        for m in self.models:
            q.add_metric([m.name], m.batcher.pending)
            cap.add_metric([m.name], m.batcher.effective_max_batch)
            rt = m.holder.runtime
            if rt is not None:
                info.add_metric([m.name, rt.name, rt.version, rt.sha, rt.encoders.provider], 1)
            up.add_metric([m.name], 0 if rt is None else 1)
            err.add_metric([m.name], 1 if (rt is not None and m.holder.error) else 0)
        yield from (q, info, up, err, cap)

    def _gpu_memory(self) -> Iterable[Metric]:
        """Memory used and free per GPU; nothing at all where NVML is missing (no pynvml, no GPU)."""
        readings = self.gpu.read()
        if not readings:
            return
        used = GaugeMetricFamily(
            "zeroshot_gpu_memory_used_bytes", "GPU memory in use, by every process (NVML)", labels=["gpu"]
        )
        free = GaugeMetricFamily("zeroshot_gpu_memory_free_bytes", "GPU memory free (NVML)", labels=["gpu"])
        for r in readings:
            used.add_metric([r.gpu], r.used_bytes)
            free.add_metric([r.gpu], r.free_bytes)
        yield from (used, free)

    def _counters(self, lane: dict[str, int | float]) -> list[tuple[str, str, float]]:
        """(name, help, value) of every counter shared by the models, read at scrape time."""
        return [
            ("zeroshot_label_cache_hits", "labels found in the label-embedding cache", self.cache.hits),
            ("zeroshot_label_cache_misses", "labels that had to be encoded", self.cache.misses),
            (
                "zeroshot_text_prompts_encoded",
                "prompts run through the text encoder",
                self.cache.encoded_prompts,
            ),
            ("zeroshot_answers_ruled", "image answers judged by an abstain rule", self.engine.ruled),
            (
                "zeroshot_answers_abstained",
                "image answers that abstained: none of the labels",
                self.engine.abstained,
            ),
            (
                "zeroshot_text_slices_waited",
                "text-encoder slices that waited for another job's slice to end",
                lane["waited"],
            ),
        ]

    def collect(self) -> Iterable[Metric]:
        lane = self.text_lane.stats()  # one read under the lane's lock
        yield from self._per_model()
        yield from self._gpu_memory()
        for name, doc, value in self._counters(lane):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        w = GaugeMetricFamily("zeroshot_text_jobs_waiting", "text-encoder jobs waiting for their next slice")
        w.add_metric([], lane["waiting"])
        yield w
        b = GaugeMetricFamily("zeroshot_label_cache_bytes", "bytes held by the label-embedding cache")
        b.add_metric([], self.cache.bytes)
        yield b


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "zeroshot_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        # Only with API keys: ids are hash prefixes (app/runtime/quotas.py key_id), never keys, and
        # their number is bounded by the keys configured.
        self.key_requests = Counter(
            "zeroshot_key_requests",
            "HTTP requests to /v1 by API key id and status (429: over a quota)",
            ["key_id", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "zeroshot_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "zeroshot_batch_size",
            "images per image-encoder batch (the pieces of a batch split after an out-of-memory error "
            "count as one)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "zeroshot_queue_wait_seconds",
            "time the oldest image of a batch waited",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.encode_time = Histogram(
            "zeroshot_image_encode_seconds",
            "image-encoder time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_State(engine))

    def on_batch(self, model: str, n: int, waited_s: float, run_s: float) -> None:
        self.batch_size.labels(model).observe(n)
        self.queue_wait.labels(model).observe(waited_s)
        self.encode_time.labels(model).observe(run_s)


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): counts every HTTP response by the route that served it."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics | None]) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m = self.metrics()
            if m is not None:
                route: Any = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                m.requests.labels(path, scope["method"], str(status[0])).inc()
                kid = scope.get("state", {}).get("key_id")  # set by the API-key check
                if kid is not None:
                    m.key_requests.labels(kid, str(status[0])).inc()
                m.latency.labels(path).observe(time.perf_counter() - t0)
