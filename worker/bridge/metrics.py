"""Prometheus metrics for the bridge (`hailo_bridge_*`), on a registry of its own."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.metrics import LATENCY_BUCKETS

# A fixed label set: a scanner probing random paths must not grow the registry without bound.
ROUTES = frozenset({"/healthz", "/infer", "/metrics", "/docs", "/openapi.json", "/", "/events"})


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hailo_bridge_requests", "HTTP requests answered, by route and status.",
            ["route", "status"], registry=r,
        )
        self.in_flight = Gauge(
            "hailo_bridge_requests_in_flight", "HTTP requests being served now.", registry=r
        )
        self.request_seconds = Histogram(
            "hailo_bridge_request_seconds", "HTTP request latency, by route.", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.worker_seconds = Histogram(
            "hailo_bridge_worker_seconds", "From publishing an /infer window to its answer.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.worker_errors = Counter(
            "hailo_bridge_worker_errors", "Error answers from workers, by code.", ["code"],
            registry=r,
        )
        self.timeouts = Counter(
            "hailo_bridge_timeouts", "/infer windows no worker answered in BRIDGE_TIMEOUT_MS.",
            registry=r,
        )
        self.late_replies = Counter(
            "hailo_bridge_late_replies",
            "Replies that matched no waiting request (it had timed out, or a second worker "
            "answered too).",
            registry=r,
        )
        self.pending = Gauge(
            "hailo_bridge_pending_replies", "Windows published and not answered yet.", registry=r
        )
        self.connected = Gauge(
            "hailo_bridge_broker_connected", "1 while connected to the broker.", registry=r
        )
        self.workers_online = Gauge(
            "hailo_bridge_workers_online", "Workers `online` with a fresh status.", registry=r
        )


class MetricsMiddleware:
    """Counts, times and gauges every HTTP request (a plain ASGI middleware: cheap)."""

    def __init__(self, app: ASGIApp, metrics: BridgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        status = 500  # what the client sees if the app dies before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            m.in_flight.dec()
            m.request_seconds.labels(route).observe(time.perf_counter() - started)
            m.requests.labels(route, str(status)).inc()
