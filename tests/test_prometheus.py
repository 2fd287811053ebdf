"""The real Prometheus scrapes the real worker and bridge with compose/prometheus.yml, and every
PromQL expression of the Grafana dashboard returns data from it (issue 13).

Only the file's targets are rewritten (Compose service names become loopback ports), and the
scrape interval is shortened: rate() needs two samples inside its range, and a counter has to
move between them, so at the file's 15 s each stage of this test would wait half a minute.

The worker runs in `hailo` mode against the HailoRT double (tests/hailo_double), not `stub`:
it is the one backend with a device temperature, and the double's injected fault is the only
way a real worker sends an error back through /infer, without which the bridge's errors-by-code
counter has no series at all. Every other series comes from ordinary traffic.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from broker_util import Broker, free_port
from dashboard_util import PROMETHEUS_YML, queries
from prometheus_util import Prometheus, has_data, tool, with_targets
from reliability.double import make_hef, write_control
from support import BridgeProcess, Collector, WorkerProcess, wait_until

from worker.wire import encode_window

SCRAPE_INTERVAL = "1s"
TEMPERATURE_C = 51.5  # not the double's default (45.0): the gauge must carry what the chip says
ROUNDS = 8  # per phase; the fault between the phases lasts over a second, so scrapes fall between
GOOD_PER_ROUND = 4
BAD_WINDOW = b"\x00 not msgpack"


def test_promtool_accepts_the_shipped_config() -> None:
    done = subprocess.run([tool("promtool"), "check", "config", str(PROMETHEUS_YML)],
                          capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "SUCCESS" in out, out


class Traffic:
    """Windows over MQTT (good and bad) and requests to the bridge, counted as they go."""

    def __init__(self, collector: Collector, bridge_url: str) -> None:
        self.collector, self.url = collector, bridge_url
        self.rng = np.random.default_rng(13)
        self.good = self.bad = self.infer_ok = 0
        self.http = httpx.Client(timeout=15)

    def window(self) -> np.ndarray:
        return self.rng.standard_normal((100, 9)).astype(np.float32)

    def infer(self) -> httpx.Response:
        return self.http.post(f"{self.url}/infer", json={"x": self.window().tolist()})

    def rounds(self, n: int) -> None:
        for _ in range(n):
            for _ in range(GOOD_PER_ROUND):
                window = encode_window(self.window(), seq=self.good)
                self.collector.publish("imu/prom-1/window", window)
                self.good += 1
            self.collector.publish("imu/prom-1/window", BAD_WINDOW)
            self.bad += 1
            r = self.infer()
            assert r.status_code == 200, r.text
            self.infer_ok += 1
            self.http.get(f"{self.url}/healthz")  # its status may be 503 for a moment: no matter
        self.collector.wait_answers(self.good + self.bad, timeout=30)


def _both_up(prom: Prometheus) -> bool:
    targets = prom.targets()
    return len(targets) == 2 and all(t["health"] == "up" for t in targets)


def _value(prom: Prometheus, expr: str) -> dict[str, float]:
    """{the series' `code` label (or ''): value}."""
    return {labels.get("code", ""): v for labels, v in prom.query(expr)}


def _wait_degraded_then_online(collector: Collector, worker_id: str) -> None:
    def recovered() -> bool:
        states = [s["state"] for s in collector.statuses(worker_id)]
        return "degraded" in states and states[-1] == "online"

    wait_until(recovered, 20, "the worker to go degraded and come back online")


def test_prometheus_scrapes_both_and_every_dashboard_query_has_data(
    broker: Broker, collector: Collector, start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    control = tmp_path / "control.json"
    write_control(control, temperature_c=TEMPERATURE_C)
    metrics_port = free_port()
    worker = start_worker(infer_mode="hailo", hef_path=make_hef(tmp_path / "m.hef"),
                          hailo_double_control=control, metrics_port=metrics_port,
                          status_interval_s=2)
    bridge = BridgeProcess(broker.port, log_dir=tmp_path, status_interval_s=2,
                           bridge_timeout_ms=10_000).start()
    prom: Prometheus | None = None
    traffic: Traffic | None = None
    try:
        wait_until(lambda: httpx.get(f"{bridge.url}/healthz").status_code == 200, 20,
                   "the bridge to see the worker online")
        config = with_targets(yaml.safe_load(PROMETHEUS_YML.read_text()), {
            "hailo-worker": [f"127.0.0.1:{metrics_port}"],
            "hailo-bridge": [f"127.0.0.1:{bridge.port}"],
        }, scrape_interval=SCRAPE_INTERVAL)
        prom = Prometheus(config, tmp_path / "prometheus").start()
        try:
            wait_until(lambda: _both_up(prom), 30, "both targets to be up")
        except AssertionError:
            raise AssertionError(f"targets: {prom.targets()}\n{prom.log()}") from None

        traffic = Traffic(collector, bridge.url)
        traffic.rounds(ROUNDS)
        # One device fault, with nothing else on the chip, so the /infer window is the one
        # that meets it: the worker answers inference_failed and the bridge counts it.
        write_control(control, temperature_c=TEMPERATURE_C, fail_next_n=1)
        failed = traffic.infer()
        assert failed.status_code == 502 and failed.json()["error"] == "inference_failed", (
            failed.text)
        _wait_degraded_then_online(collector, worker.worker_id)
        traffic.rounds(ROUNDS)

        missing: dict[str, Any] = {}

        def all_have_data() -> bool:
            missing.clear()
            for q in queries():
                series = prom.query(q.expr)
                if not has_data(series):
                    missing[str(q)] = series
            return not missing

        try:
            wait_until(all_have_data, 20, "every dashboard query to return data")
        except AssertionError:
            raise AssertionError("no data (or NaN) for:\n" + "\n".join(
                f"  {q} -> {s}" for q, s in missing.items())) from None

        # The data is the traffic's, not merely present: counts as the last scrape saw them.
        expected = {
            "hailo_worker_windows_received_total":
                {"": traffic.good + traffic.bad + traffic.infer_ok + 1},
            "hailo_worker_results_published_total": {"": traffic.good + traffic.infer_ok},
            # Every code's series exists from the start, at 0 until it happens.
            "hailo_worker_errors_total": {
                "decode_error": traffic.bad, "inference_failed": 1, "invalid_dtype": 0,
                "invalid_shape": 0, "non_finite": 0, "overloaded": 0, "too_large": 0},
            "hailo_bridge_worker_errors_total": {"inference_failed": 1},
            "hailo_worker_device_temperature_celsius": {"": TEMPERATURE_C},
            "hailo_worker_broker_connected": {"": 1},
            "hailo_bridge_broker_connected": {"": 1},
        }
        seen: dict[str, dict[str, float]] = {}

        def counted() -> bool:
            seen.update({expr: _value(prom, expr) for expr in expected})
            return seen == expected

        try:
            wait_until(counted, 10, "Prometheus to hold the traffic's counts")
        except AssertionError:
            raise AssertionError(f"expected {expected}\nseen     {seen}") from None
    finally:
        if prom is not None:
            prom.stop()
        bridge.stop()
        if traffic is not None:
            traffic.http.close()
