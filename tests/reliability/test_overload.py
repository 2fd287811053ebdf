"""Publishers at several times the worker's capacity: flat memory, at most QUEUE_MAX held, and
every window answered with a result (the rest waits in the broker: flow control)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from broker_util import free_port
from support import WorkerProcess

from reliability.accounting import Ledger, Sensors, cpu_reference
from reliability.probes import Sampler, metric

QUEUE_MAX = 16
BATCH = 4
DEVICE_MS = 20  # the double's chip time per job: capacity is about BATCH / 20 ms = 200 windows/s
RATE = 800  # about four times that
SECONDS = 8.0
RSS_GROWTH_MIB = 15
# Debian's Mosquitto 2.0.11 does not keep a client's Receive Maximum once it acknowledges in order
# (db__message_delete_outgoing counts inflight messages only up to the one acknowledged; fixed in
# 2.0.13): it pushes its whole backlog into the worker's connection, TCP holds it back, and the
# PUBACKs to the worker's answers queue behind it. Each answer is kept (for a resend) until its
# PUBACK is read: about 2 KiB a window of backlog, returned once the backlog is through.
BACKLOG_KIB_PER_WINDOW = 2.5


class QueueWatch:
    """Polls the worker's queue-depth gauge every 20 ms."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.depths: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self._stop.wait(0.02):
                depth = metric(http.get(self.url).text, "hailo_worker_queue_depth")
                if depth is not None:
                    self.depths.append(depth)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_overload_holds_queue_max_and_answers_everything_with_results(
    start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors], hef: Path, tmp_path: Path,
) -> None:
    ledger.reference, ledger.tolerance = cpu_reference, 1e-5
    metrics_port = free_port()
    w = start_worker(worker_id="w-over", infer_mode="hailo", hef_path=hef,
                     hailo_double_latency_ms=DEVICE_MS, batch_max_size=BATCH,
                     queue_max=QUEUE_MAX, metrics_port=metrics_port)
    assert w.proc is not None
    sampler = Sampler(w.proc.pid, interval_s=0.2).start()
    watch = QueueWatch(metrics_port)
    pub = sensors([f"o{i}" for i in range(8)]).start(rate=RATE, duration=SECONDS)
    pub.join()
    published_in = time.monotonic()
    ledger.wait_complete(90)
    drained_in = time.monotonic() - published_in
    watch.stop()
    sampler.stop()
    report = ledger.report()
    served = report.outcomes["result"]
    first, last = sampler.rss_mib(0.0, 0.25), sampler.rss_mib(0.75, 1.0)
    statuses = [d for _, d, _ in ledger.statuses if "queue_depth" in d]
    print(f"\n{report.summary()}\n{sampler.describe()}; served {served} of {report.published} "
          f"offered at {report.published / SECONDS:.0f}/s; queue depth max "
          f"{max(watch.depths):.0f} over {len(watch.depths)} polls; the backlog answered "
          f"{drained_in:.2f} s after the last publish")
    report.assert_clean()
    assert report.outcomes == {"result": report.published}  # nothing shed: it waited its turn
    # The device kept busy: the backlog drained at about its capacity.
    capacity = BATCH / (DEVICE_MS / 1000)
    assert report.published / (SECONDS + drained_in) > 0.5 * capacity
    assert max(watch.depths) <= QUEUE_MAX and len(watch.depths) > 50
    assert all(d["queue_depth"] <= QUEUE_MAX for d in statuses)
    assert any(d.get("backpressure") for d in statuses)
    allowed = RSS_GROWTH_MIB + report.published * BACKLOG_KIB_PER_WINDOW / 1024
    assert max(last) - min(first) < allowed, sampler.describe()
