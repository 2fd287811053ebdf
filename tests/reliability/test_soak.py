"""Long runs (`make soak`, not in CI): the full stack at a steady rate, and a crash loop.

SOAK_SECONDS (default 600) sets each run's length, SOAK_RATE (default 50) the windows a second
from ten sensors, SOAK_INFER_MODE (default cpu: the reference model) the worker's backend.
Each run prints answers, errors, memory and descriptors of every process at the start and the
end, and writes them as JSON to SOAK_REPORT when that names a file.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from support import BridgeProcess, WorkerProcess

from reliability.accounting import Key, Ledger, Sensors, cpu_reference
from reliability.probes import HttpProbe, MiB, Sampler

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SOAK_RATE = float(os.environ.get("SOAK_RATE", "50"))
SOAK_MODE = os.environ.get("SOAK_INFER_MODE", "cpu")
CRASH_EVERY_S = 20.0
RSS_GROWTH_MIB = 20
FD_GROWTH = 2

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(SOAK_SECONDS * 2 + 300))]


def _edges(sampler: Sampler) -> dict[str, float]:
    """The first sample after warm-up (5% into the run) and the last."""
    start = sampler.samples[len(sampler.samples) // 20]
    end = sampler.samples[-1]
    return {"rss_mib_start": round(start.rss / MiB, 1), "rss_mib_end": round(end.rss / MiB, 1),
            "rss_mib_peak": round(max(s.rss for s in sampler.samples) / MiB, 1),
            "fds_start": start.fds, "fds_end": end.fds}


def _write(name: str, doc: dict[str, Any]) -> None:
    print(f"\n{name}: {json.dumps(doc, indent=2)}")
    path = os.environ.get("SOAK_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"run": name, **doc}) + "\n")


def test_soak_full_stack_at_a_steady_rate(
    broker: Any, start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors], bridge: BridgeProcess, request: pytest.FixtureRequest,
) -> None:
    settings: dict[str, Any] = {"worker_id": "w-soak", "infer_mode": SOAK_MODE}
    if SOAK_MODE != "stub":
        ledger.reference, ledger.tolerance = cpu_reference, 1e-5
    if SOAK_MODE == "hailo":
        settings["hef_path"] = request.getfixturevalue("hef")
    w = start_worker(**settings)
    assert w.proc is not None and bridge.proc is not None
    every = max(1.0, SOAK_SECONDS / 200)
    samplers = {"worker": Sampler(w.proc.pid, every).start(),
                "bridge": Sampler(bridge.proc.pid, every).start(),
                # broker_util.Broker keeps its process private; memory is what matters here.
                "broker": Sampler(broker._proc.pid, every).start()}
    http = HttpProbe(bridge.url, interval_s=1.0)
    pub = sensors([f"soak{i}" for i in range(10)]).start(rate=SOAK_RATE, duration=SOAK_SECONDS)
    started = time.monotonic()
    while pub.running:
        time.sleep(min(30.0, SOAK_SECONDS / 10))
        s = samplers["worker"].samples[-1]
        print(f"[{time.monotonic() - started:6.0f} s] published {pub.published}, unanswered "
              f"{ledger.unanswered()}, worker RSS {s.rss / MiB:.1f} MiB, fds {s.fds}",
              flush=True)
    pub.join()
    ledger.wait_complete(60)
    http.stop()
    for sampler in samplers.values():
        sampler.stop()
    report = ledger.report()
    edges = {name: _edges(s) for name, s in samplers.items()}
    codes = Counter(code for _, code in http.seen)
    _write("steady", {
        "seconds": SOAK_SECONDS, "rate": SOAK_RATE, "mode": SOAK_MODE,
        "published": report.published, "answers": dict(report.outcomes),
        "missing": len(report.missing), "duplicated": len(report.duplicates),
        "wrong": len(report.wrong), "http": dict(codes), "processes": edges,
        "summary": report.summary(),
    })
    report.assert_clean()
    assert report.outcomes == {"result": report.published}
    assert set(codes) == {200}
    for name in ("worker", "bridge"):
        e = edges[name]
        assert e["rss_mib_end"] - e["rss_mib_start"] < RSS_GROWTH_MIB, (name, e)
        assert e["fds_end"] <= e["fds_start"] + FD_GROWTH, (name, e)


def test_soak_crash_loop(
    start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors],
) -> None:
    """kill -9 the worker every CRASH_EVERY_S and restart it a second later, for SOAK_SECONDS."""
    w = start_worker(worker_id="w-loop")
    pub = sensors([f"loop{i}" for i in range(10)]).start(rate=SOAK_RATE)
    kills: list[tuple[float, float]] = []  # (killed at, restarted at)
    deadline = time.monotonic() + SOAK_SECONDS
    while time.monotonic() + CRASH_EVERY_S < deadline:
        time.sleep(CRASH_EVERY_S)
        killed_at = time.monotonic()
        w.kill()
        time.sleep(1.0)
        kills.append((killed_at, time.monotonic()))
        w = start_worker(worker_id="w-loop", wait_state=None)
    time.sleep(max(0.0, deadline - time.monotonic()))
    pub.stop()
    ledger.wait_complete(60)
    report = ledger.report()

    def in_flight_at_a_kill(key: Key) -> bool:
        answers = ledger.answers[key]
        return len(answers) == 2 and any(
            ledger.published_at[key] < k and answers[0].t < r < answers[1].t for k, r in kills)

    _write("crash-loop", {
        "seconds": SOAK_SECONDS, "rate": SOAK_RATE, "kills": len(kills),
        "published": report.published, "answers": dict(report.outcomes),
        "missing": len(report.missing), "duplicated": len(report.duplicates),
        "wrong": len(report.wrong), "summary": report.summary(),
    })
    report.assert_clean(allow_duplicate=in_flight_at_a_kill)
    assert report.outcomes == {"result": report.published}
