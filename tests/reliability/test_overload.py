"""Publishers at several times the worker's capacity: flat memory, a bounded queue, sheds load."""

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


def test_overload_sheds_with_overloaded_and_stays_flat(
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
    pub = sensors([f"o{i}" for i in range(8)]).start(rate=RATE, duration=SECONDS,
                                                    also=["overloaded"])
    pub.join()
    published_in = time.monotonic()
    ledger.wait_complete(60)
    drained_in = time.monotonic() - published_in
    watch.stop()
    sampler.stop()
    report = ledger.report()
    served = report.outcomes["result"]
    first, last = sampler.rss_mib(0.0, 0.25), sampler.rss_mib(0.75, 1.0)
    statuses = [d for _, d, _ in ledger.statuses if "queue_depth" in d]
    print(f"\n{report.summary()}\n{sampler.describe()}; served {served / SECONDS:.0f}/s of "
          f"{report.published / SECONDS:.0f}/s offered; queue depth max "
          f"{max(watch.depths):.0f} over {len(watch.depths)} polls; answers all in "
          f"{drained_in:.2f} s after the last publish")
    report.assert_clean()
    assert set(report.outcomes) == {"result", "overloaded"}
    assert report.outcomes["overloaded"] > report.published / 2  # most of the excess is shed
    assert served > 0.5 * BATCH / (DEVICE_MS / 1000) * SECONDS  # and the device kept busy
    assert max(watch.depths) <= QUEUE_MAX and len(watch.depths) > 50
    assert all(d["queue_depth"] <= QUEUE_MAX for d in statuses)
    # A served window waited for at most a full queue ahead of it, plus its own batch.
    assert max(report.worker_latency_ms) < 1000
    assert max(first) < min(first) + RSS_GROWTH_MIB
    assert max(last) - min(first) < RSS_GROWTH_MIB, sampler.describe()
