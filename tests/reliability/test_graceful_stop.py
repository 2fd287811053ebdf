"""SIGTERM under load: the queue is answered, `stopped` is said, the exit is 0 and prompt."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from support import WorkerProcess

from reliability.accounting import Ledger, Sensors, cpu_reference

DEVICE_MS = 50  # the double's chip time per job: about 80 windows/s at batch 4
RATE = 200      # so a backlog builds up in the queue before the stop
# worker/service.py: the batch thread gets STOP_DRAIN_S (10 s) to answer the queue, the broker
# STOP_DRAIN_S / 2 to acknowledge the answers, then `stopped` gets 2 s: 17 s at the very most.
STOP_BOUND_S = 17.0


def test_sigterm_under_load_answers_the_queue_and_exits_0(
    start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors], hef: Path,
) -> None:
    ledger.reference, ledger.tolerance = cpu_reference, 1e-5
    settings = {"worker_id": "w-term", "infer_mode": "hailo", "hef_path": hef,
                "hailo_double_latency_ms": DEVICE_MS, "batch_max_size": 4}
    w = start_worker(**settings)
    pub = sensors([f"t{i}" for i in range(4)]).start(rate=RATE)
    time.sleep(2.0)
    term_at = time.monotonic()
    w.signal(signal.SIGTERM)
    code = w.wait(STOP_BOUND_S + 5)
    exited_at = time.monotonic()
    time.sleep(0.5)  # the sensors keep publishing while the worker is gone
    found = re.search(r"answering (\d+) windows held", w.log())
    assert found, w.log()
    queued = int(found.group(1))
    during_stop = sum(1 for a in ledger.snapshot().values() if term_at <= a[0].t <= exited_at)
    stopped_at = ledger.wait_state("w-term", "stopped", after=term_at, timeout=5)
    restarted_at = time.monotonic()
    pub.stop()
    # The next start (a fast device this time) answers what arrived while the worker was away.
    start_worker(**{**settings, "hailo_double_latency_ms": 1}, wait_state=None)
    ledger.wait_complete(30)
    report = ledger.report()
    redelivered = sum(1 for a in ledger.snapshot().values() if a[0].t > restarted_at)
    print(f"\n{report.summary()}\nSIGTERM with {queued} windows queued: exit {code} after "
          f"{exited_at - term_at:.2f} s, `stopped` after {stopped_at - term_at:.2f} s, "
          f"{during_stop} answers between the signal and the exit; {redelivered} windows "
          f"answered by the next start")
    assert code == 0
    assert exited_at - term_at < STOP_BOUND_S
    assert queued > 50  # a real backlog, not an idle stop
    assert during_stop >= queued  # the queue was answered before the exit
    assert term_at < stopped_at < exited_at + 0.5
    report.assert_clean()  # nothing lost or doubled across the stop and the next start
    assert report.outcomes == {"result": report.published}
