"""The worker's lock-free latency histogram exposes what prometheus_client's Histogram would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from worker.metrics import LATENCY_BUCKETS, OneThreadHistogram


def test_one_thread_histogram_matches_prometheus_clients() -> None:
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = OneThreadHistogram("lat_seconds", "Latency.", LATENCY_BUCKETS, ours_registry)
    theirs = Histogram("lat_seconds", "Latency.", buckets=LATENCY_BUCKETS,
                       registry=theirs_registry)
    rng = random.Random(7)
    values = [*LATENCY_BUCKETS, 0.0, 9.0] + [rng.expovariate(50) for _ in range(500)]
    for v in values:
        ours.observe(v)
        theirs.observe(v)

    def lines(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines()
                if "_created" not in line]

    assert lines(ours_registry) == lines(theirs_registry)
    assert f"lat_seconds_count {float(len(values))}" in lines(ours_registry)
