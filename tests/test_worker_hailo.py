"""The real worker in INFER_MODE=hailo, against the HailoRT test double, over a real broker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from schema_util import validate
from support import HAILO_DOUBLE, REPO, Collector, WorkerProcess, wait_until

from worker.hef import sha256_file
from worker.settings import REFERENCE_ONNX
from worker.wire import encode_window

sys.path.insert(0, str(HAILO_DOUBLE))
import make_hef
from hailo_platform._double import read_log, write_control

sys.path.remove(str(HAILO_DOUBLE))

StartWorker = Callable[..., WorkerProcess]


class Device:
    """One simulated Hailo-8: its HEF, fault control file, event log and device lock."""

    def __init__(self, tmp: Path) -> None:
        self.hef = make_hef.write_hef(tmp / "tcn_encoder-v0.1.0.hef", REFERENCE_ONNX)
        self.control = tmp / "control.json"
        self.log = tmp / "double.log"
        self.lock = tmp / "hailo0.lock"

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {
            "infer_mode": "hailo", "hef_path": self.hef,
            "hailo_double_control": self.control, "hailo_double_log": self.log,
            "hailo_double_device_lock": self.lock, "device_timeout_ms": 300, **extra,
        }

    def fault(self, **fields: Any) -> None:
        write_control(self.control, **fields)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in read_log(self.log) if e["event"] == kind]


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    yield Device(tmp_path)


@pytest.fixture(scope="module")
def onnx() -> ort.InferenceSession:
    return ort.InferenceSession(str(REFERENCE_ONNX), providers=["CPUExecutionProvider"])


def window(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((100, 9)).astype(np.float32)


def send(collector: Collector, first: int, n: int, sensor: str = "h") -> None:
    for i in range(first, first + n):
        collector.client.publish(f"imu/{sensor}/window", encode_window(window(i), seq=i), qos=1)


def test_hailo_results_equal_onnxruntime_in_batches_of_bindings(
    start_worker: StartWorker, collector: Collector, device: Device, onnx: ort.InferenceSession
) -> None:
    w = start_worker(**device.settings(batch_max_size=8, batch_max_wait_ms=50))
    status = collector.wait_state(w.worker_id, "online")
    validate("status", status)
    assert status["mode"] == "hailo" and status["model"] == "tcn_encoder-v0.1.0"
    assert status["hef_sha256"] == sha256_file(device.hef)
    send(collector, 0, 40)
    answers = collector.wait_answers(40)
    for m in answers:
        doc = m.doc()
        validate("result", doc)
        latent, motifs = onnx.run(["latent", "motif_scores"], {"x": window(doc["seq"])[None]})
        np.testing.assert_allclose(doc["latent"], latent[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(doc["motif_scores"], motifs[0], atol=1e-5, rtol=0)
    frames = [e["frames"] for e in device.events("run_async")]
    assert max(frames) > 1 and max(frames) <= 8, frames  # one Bindings per frame, batched
    owners = {e["pid"] for e in device.events("vdevice_open")}
    assert owners == {w.proc.pid if w.proc else -1}  # only the worker opened the device


def test_timeout_answers_inference_failed_then_recovers(
    start_worker: StartWorker, collector: Collector, device: Device
) -> None:
    w = start_worker(**device.settings(batch_max_size=4, batch_max_wait_ms=20))
    device.fault(timeouts_next_n=1)
    send(collector, 0, 4)
    degraded = collector.wait_state(w.worker_id, "degraded", timeout=10)
    validate("status", degraded)
    assert "hailo" in degraded["detail"]
    collector.wait_state(w.worker_id, "online", timeout=20)  # reopened with backoff
    send(collector, 100, 4)
    answers = collector.wait_answers(8, timeout=20)
    errors = [m.doc() for m in answers if m.topic.endswith("/error")]
    results = [m.doc() for m in answers if m.topic.endswith("/result")]
    assert errors and all(e["error"] == "inference_failed" for e in errors)
    assert {r["seq"] for r in results} >= {100, 101, 102, 103}
    assert len({(m.doc()["seq"]) for m in answers}) == 8  # each window answered exactly once


@pytest.mark.parametrize("fallback", ["none", "cpu"])
def test_device_missing_at_start_is_served_per_hailo_fallback(
    start_worker: StartWorker, collector: Collector, device: Device, fallback: str
) -> None:
    device.fault(open_fails=True)
    w = start_worker(wait_state="degraded", **device.settings(hailo_fallback=fallback))
    status = collector.statuses(w.worker_id)[-1]
    validate("status", status)
    assert status["mode"] == ("cpu" if fallback == "cpu" else "hailo")
    send(collector, 0, 3)
    answers = collector.wait_answers(3)
    if fallback == "cpu":
        assert all(m.doc()["model"] == "tcn_encoder-v0.1.0" and "latent" in m.doc()
                   for m in answers)
    else:
        assert all(m.doc()["error"] == "inference_failed" for m in answers)
    device.fault()  # the device comes back
    online = collector.wait_state(w.worker_id, "online", timeout=40)
    assert online["mode"] == "hailo" and "detail" not in online
    collector.clear()
    send(collector, 10, 3)
    assert all("latent" in m.doc() for m in collector.wait_answers(3))
    assert device.events("run_async")  # served by the device now


def test_device_lost_mid_stream_with_cpu_fallback_loses_nothing(
    start_worker: StartWorker, collector: Collector, device: Device
) -> None:
    w = start_worker(**device.settings(hailo_fallback="cpu", batch_max_wait_ms=2))
    send(collector, 0, 10)
    collector.wait_answers(10)
    device.fault(device_lost=True)
    send(collector, 10, 20)
    collector.wait_state(w.worker_id, "degraded", timeout=10)
    wait_until(lambda: len(collector.answers()) >= 30, 15, "30 answers")
    device.fault()
    collector.wait_state(w.worker_id, "online", timeout=40)
    send(collector, 30, 10)
    answers = collector.wait_answers(40)
    seqs = sorted(m.doc()["seq"] for m in answers)
    assert seqs == list(range(40))
    failed = [m for m in answers if m.topic.endswith("/error")]
    assert all(m.doc()["error"] == "inference_failed" for m in failed)
    assert len(failed) <= 8  # at most the batch that was on the device when it went


def _run_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(HAILO_DOUBLE), "MQTT_PORT": "1", **env}
    return subprocess.run([sys.executable, "-m", "worker"], env=full, capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def test_hef_with_a_wrong_listed_hash_is_refused(device: Device) -> None:
    wrong = "0" * 64
    (device.hef.parent / "hef_sha256sum.txt").write_text(f"{wrong}  {device.hef.name}\n")
    proc = _run_worker({"INFER_MODE": "hailo", "HEF_PATH": str(device.hef)})
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "HEF_PATH" in line and wrong in line and sha256_file(device.hef) in line
    assert len(line.splitlines()) == 1


@pytest.mark.parametrize(("name", "value"), [("NUM_MOTIFS", "10"), ("LATENT_DIM", "32")])
def test_output_sizes_that_disagree_with_the_model_are_refused(
    device: Device, name: str, value: str
) -> None:
    proc = _run_worker({"INFER_MODE": "hailo", "HEF_PATH": str(device.hef), name: value})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in proc.stderr


def test_check_command_reports_the_device(device: Device) -> None:
    env = {k.upper(): str(v) for k, v in device.settings().items()}
    full = {**os.environ, "PYTHONPATH": str(HAILO_DOUBLE), **env}
    check = subprocess.run([sys.executable, "-m", "worker", "--check"], env=full,
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert check.returncode == 0, check.stderr
    assert "HAILO8" in check.stdout and "check OK" in check.stdout
    assert "latent [1, 64], motif_scores [1, 12]" in check.stdout
    device.fault(open_fails=True)
    failed = subprocess.run([sys.executable, "-m", "worker", "--check"], env=full,
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert failed.returncode == 2 and "HAILO_OUT_OF_PHYSICAL_DEVICES" in failed.stderr
