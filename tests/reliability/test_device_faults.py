"""Device faults through the HailoRT test double: errors, `degraded`, recovery, never a hang."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import WorkerProcess

from reliability.accounting import Ledger, Sensors, cpu_reference
from reliability.double import write_control

DEVICE_TIMEOUT_MS = 200
# One device call is bounded by DEVICE_TIMEOUT_MS inside the backend and by the worker's
# watchdog at 2 x DEVICE_TIMEOUT_MS + 1 s; a window may also wait for one reopen attempt and
# the batch ahead of it. Nothing may take longer than this from publish to answer.
ANSWER_BOUND_S = 3.0
TOLERANCE = 1e-5  # the double runs the reference ONNX model: hailo answers equal cpu's


def _hailo_worker(start_worker: Callable[..., WorkerProcess], hef: Path, control: Path,
                  **settings: Any) -> WorkerProcess:
    write_control(control)
    return start_worker(infer_mode="hailo", hef_path=hef, hailo_double_control=control,
                        device_timeout_ms=DEVICE_TIMEOUT_MS, hailo_double_latency_ms=2,
                        **settings)


FAULTS: list[tuple[str, dict[str, Any], float]] = [
    # (name, control fields, seconds the fault lasts before it is cleared; 0: it passes alone)
    ("one job times out", {"timeouts_next_n": 1}, 0.0),
    ("one job fails on the chip", {"fail_next_n": 1}, 0.0),
    ("device lost", {"device_lost": "closed"}, 1.5),
    ("device hangs", {"hang": True}, 1.5),
]


def test_faults_answer_inference_failed_go_degraded_and_recover(
    start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors], hef: Path, tmp_path: Path,
) -> None:
    ledger.reference, ledger.tolerance = cpu_reference, TOLERANCE
    control = tmp_path / "control.json"
    w = _hailo_worker(start_worker, hef, control, worker_id="w-dev")
    pub = sensors([f"d{i}" for i in range(3)]).start(rate=60, also=["inference_failed"])
    time.sleep(1.0)
    spans: list[tuple[str, float, float, float]] = []
    for n, (name, fields, lasts) in enumerate(FAULTS, start=1):
        began = time.monotonic()
        write_control(control, seq=n, **fields)
        degraded_at = ledger.wait_state("w-dev", "degraded", after=began, timeout=10)
        cleared = began
        if lasts:
            time.sleep(lasts)
            cleared = time.monotonic()
            write_control(control, seq=n)
        online_at = ledger.wait_state("w-dev", "online", after=max(cleared, degraded_at),
                                      timeout=40)
        spans.append((name, began, degraded_at, online_at))
        time.sleep(0.7)
    pub.stop()
    ledger.wait_complete(30)
    report = ledger.report()
    failed_at = [a[0].t for a in ledger.snapshot().values()
                 if a[0].outcome == "inference_failed"]
    print(f"\n{report.summary()}")
    for name, began, degraded_at, online_at in spans:
        hits = sum(1 for t in failed_at if began <= t <= online_at + 0.5)
        print(f"{name}: degraded after {degraded_at - began:.2f} s, online again "
              f"{online_at - began:.2f} s after the fault began, {hits} windows inference_failed")
        assert hits > 0, name
    report.assert_clean()
    assert set(report.outcomes) == {"result", "inference_failed"}
    # Every inference_failed falls inside a fault; everything else was a correct result.
    assert all(any(b <= t <= o + 0.5 for _, b, _, o in spans) for t in failed_at)
    assert max(report.e2e_ms) < ANSWER_BOUND_S * 1000
    degraded = [d for _, d, _ in ledger.statuses if d.get("state") == "degraded"]
    assert degraded and all(d["mode"] == "hailo" and d.get("detail") for d in degraded)
    assert w.proc is not None and w.proc.poll() is None


def test_device_lost_with_a_cpu_fallback_keeps_answering(
    start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors], hef: Path, tmp_path: Path,
) -> None:
    ledger.reference, ledger.tolerance = cpu_reference, TOLERANCE
    control = tmp_path / "control.json"
    _hailo_worker(start_worker, hef, control, worker_id="w-fb", hailo_fallback="cpu",
                  batch_max_size=4)
    pub = sensors([f"f{i}" for i in range(2)]).start(rate=60, also=["inference_failed"])
    time.sleep(0.8)
    began = time.monotonic()
    write_control(control, device_lost="driver")
    degraded_at = ledger.wait_state("w-fb", "degraded", after=began, timeout=10)
    time.sleep(2.0)
    cleared = time.monotonic()
    write_control(control)
    online_at = ledger.wait_state("w-fb", "online", after=cleared, timeout=40)
    time.sleep(0.7)
    pub.stop()
    ledger.wait_complete(30)
    report = ledger.report()
    models = {a[0].doc["model"] for k, a in ledger.snapshot().items()
              if a[0].outcome == "result" and degraded_at + 0.1 < a[0].t < cleared}
    print(f"\n{report.summary()}\ndegraded after {degraded_at - began:.2f} s, online "
          f"{online_at - cleared:.2f} s after the device came back; models while degraded "
          f"{models}")
    report.assert_clean()
    # Only the batch on the device when it was lost fails; the fallback answers the rest.
    assert report.outcomes["inference_failed"] <= 4
    assert report.outcomes["result"] >= report.published - 4
    degraded = next(d for _, d, _ in ledger.statuses if d.get("state") == "degraded")
    assert degraded["mode"] == "cpu" and "hailo" in degraded["detail"]
    assert models and "tcn_encoder" not in models  # the HEF's stem names the hailo model
