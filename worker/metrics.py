"""Prometheus metrics for the worker, on a registry of its own.

An owned registry (not the global default) can be built twice in one process without
"Duplicated timeseries" errors (prometheus/client_python#537).
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from worker.settings import ConfigError
from worker.wire import ErrorCode

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class OneThreadHistogram(Collector):
    """A histogram observed from one thread only, exposed like prometheus_client's own.

    Histogram.observe takes a lock and walks the buckets in Python: about 1.2 us, paid for
    every window. Observed only by the network thread, this needs neither (about 0.2 us); a
    scrape may see the sum one observation apart from the buckets, as it may with Histogram.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: a value on a bound is in it
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative = list(itertools.accumulate(list(self.counts)))
        buckets = [(floatToGoString(b), c)  # type: ignore[no-untyped-call]
                   for b, c in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                    sum_value=self.sum)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.windows = Counter(
            "hailo_worker_windows_received", "Windows received from the broker.", registry=r
        )
        self.results = Counter(
            "hailo_worker_results_published", "Results published.", registry=r
        )
        self.errors = Counter(
            "hailo_worker_errors", "Error answers published, by code.", ["code"], registry=r
        )
        for code in get_args(ErrorCode):  # every code reads 0 from the start, not "no data"
            self.errors.labels(code)
        self.queue_depth = Gauge(
            "hailo_worker_queue_depth", "Windows waiting for a batch.", registry=r
        )
        self.device_up = Gauge(
            "hailo_worker_device_up",
            "1 while the configured backend serves, 0 while it is down (degraded).",
            registry=r,
        )
        self.temperature = Gauge(
            "hailo_worker_device_temperature_celsius", "Device temperature, where reported.",
            registry=r,
        )
        self.backpressure_seconds = Counter(
            "hailo_worker_backpressure_seconds",
            "Time spent holding QUEUE_MAX windows and reading no more from the broker.",
            registry=r,
        )
        self.connected = Gauge(
            "hailo_worker_broker_connected", "1 while connected to the broker.", registry=r
        )
        self.batch_size = Histogram(
            "hailo_worker_batch_size", "Windows per batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "hailo_worker_inference_seconds", "Backend time per batch.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.latency_seconds = OneThreadHistogram(  # observed by the network thread
            "hailo_worker_latency_seconds", "Receipt to publish, per window.",
            LATENCY_BUCKETS, r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on `host:port` (port 0: off)."""
        if not port:
            return
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"METRICS_PORT: cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}") from None
