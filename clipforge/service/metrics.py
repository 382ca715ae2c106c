"""Prometheus metrics, one registry per app (no process-global state): requests, latencies, batches, queues.

With several server processes (`workers` > 1) prometheus_client's multiprocess mode is on
(PROMETHEUS_MULTIPROC_DIR, set by `clipforge serve`): every process writes its values to files there and a
scrape of any worker adds up all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipforge.service.errors import CLIENT_CLOSED

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self._depth: dict[str, Callable[[], int]] = {}
        r = self.registry
        self.requests = Counter(
            "clipforge_requests_total",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "clipforge_request_duration_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge(
            "clipforge_requests_in_flight", "HTTP requests being handled", registry=r, multiprocess_mode="livesum"
        )
        self.batch_size = Histogram(
            "clipforge_batch_size", "Items per encoder batch", ["kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "clipforge_batch_duration_seconds", "Encoder time per batch", ["kind"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "clipforge_queue_depth", "Items waiting for the encoder", ["kind"], registry=r, multiprocess_mode="livesum"
        )
        self.label_cache = Counter(
            "clipforge_label_cache_total", "Label-set embedding cache lookups", ["result"], registry=r
        )
        self.head_predictions = Counter(
            "clipforge_head_predictions_total", "(image, text) pairs answered, by fusion head", ["head"], registry=r
        )
        self.head_seconds = Histogram(
            "clipforge_head_predict_duration_seconds",
            "Fusion head prediction time per request (encodes included), by head",
            ["head"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def observe_batch(self, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(seconds)
        if self.multiprocess and kind in self._depth:  # other processes' depths are read from their files
            self.queue_depth.labels(kind).set(self._depth[kind]())

    def watch_queue(self, kind: str, depth: Callable[[], int]) -> None:
        """`depth()` is read at scrape time (with several processes: this one's at scrape time, the others'
        as of their last batch)."""
        self._depth[kind] = depth
        if not self.multiprocess:
            self.queue_depth.labels(kind).set_function(depth)

    def render(self) -> tuple[bytes, str]:
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        for kind, depth in self._depth.items():
            self.queue_depth.labels(kind).set(depth())
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """This process is leaving: its live gauges (in flight, queue depth) stop counting."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): counts and times every HTTP request by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, started, left = 500, False, False
        t0 = time.perf_counter()

        async def receive_wrapper() -> Message:
            nonlocal left
            message = await receive()
            left = left or message["type"] == "http.disconnect"
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            if left and not started:  # the client left before any answer: not a server error
                status = CLIENT_CLOSED
            route = scope.get("route")
            # the template ("/v1/items/{item_id}"), never the raw path: bounded label cardinality
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - t0)
