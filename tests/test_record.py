"""`hailo-record` as a real process against a real Mosquitto: the calibration set it writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from broker_util import free_port
from support import REPO, Collector, wait_until

from worker.wire import encode_window

TOPIC = "imu/{}/window"


def window(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((100, 9)).astype(np.float32)


class Recorder:
    """`python -m worker.record` with its stderr read line by line as it comes."""

    def __init__(self, port: int, *args: str, **env: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.record", *args],
            env={**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(port), **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_recording(self) -> None:
        wait_until(lambda: any(": recording " in line for line in self.lines)
                   or self.proc.poll() is not None, 15, "hailo-record to subscribe")
        assert self.proc.poll() is None, "\n".join(self.lines)

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc, "\n".join(self.lines)


def test_records_valid_windows_of_every_form_and_counts_the_invalid(
    broker: Any, collector: Collector, tmp_path: Path
) -> None:
    out = tmp_path / "calib.npy"
    rec = Recorder(broker.port, "--count", "5", "--out", str(out), "--timeout", "30")
    rec.wait_recording()
    xs = [window(i) for i in range(7)]
    wrong_shape = msgpack.packb({"x": [[0.0] * 9] * 99})
    non_finite = encode_window(np.full((100, 9), np.nan, np.float32))
    publishes = [
        ("s1", encode_window(xs[0], seq=0)),                   # compact msgpack bin
        ("s1", wrong_shape),
        ("s2", encode_window(xs[1], compact=False)),           # msgpack lists
        ("s2", b"\xc1 not msgpack"),
        ("s3", json.dumps({"x": xs[2].tolist()}).encode()),    # JSON, as mosquitto_pub -m
        ("s1", non_finite),
        ("s3", encode_window(xs[3], seq=3)),
        ("s2", encode_window(xs[4], seq=4)),
        ("s1", encode_window(xs[5], seq=5)),                   # past --count: left out
    ]
    for sensor, payload in publishes:
        collector.publish(TOPIC.format(sensor), payload, qos=1)
    collector.publish("infer/s1/result", encode_window(xs[6]))  # not a window topic

    rc, log = rec.finish()
    assert rc == 0, log
    calib = np.load(out)
    assert calib.dtype == np.float32 and calib.shape == (5, 100, 9)
    # One publisher, one QoS: the broker keeps the order, so the set is exactly these windows.
    np.testing.assert_array_equal(calib, np.stack(xs[:5]))
    assert "skipped 3 invalid (1 decode_error, 1 invalid_shape, 1 non_finite)" in log
    # Not a terminal: the progress bar prints a line per tenth, ending at 5/5.
    assert any("5/5 windows" in line and "[" in line for line in rec.lines), log
    assert rec.proc.stdout is not None and rec.proc.stdout.read() == ""
    assert not list(tmp_path.glob(".calib.npy.*")), "temporary file left behind"


def test_timeout_saves_what_came_and_exits_1(
    broker: Any, collector: Collector, tmp_path: Path
) -> None:
    out = tmp_path / "partial.npy"
    rec = Recorder(broker.port, "--count", "10", "--out", str(out), "--timeout", "2")
    rec.wait_recording()
    for i in range(3):
        collector.publish(TOPIC.format("s9"), encode_window(window(10 + i)))
    rc, log = rec.finish()
    assert rc == 1, log
    assert "timed out after 2 s with 3 of 10 windows" in log
    np.testing.assert_array_equal(np.load(out), np.stack([window(10 + i) for i in range(3)]))


def test_nothing_valid_means_no_file(broker: Any, collector: Collector, tmp_path: Path) -> None:
    out = tmp_path / "none.npy"
    rec = Recorder(broker.port, "--count", "2", "--out", str(out), "--timeout", "1.5")
    rec.wait_recording()
    collector.publish(TOPIC.format("s1"), msgpack.packb({"x": b"\0" * 3600, "shape": [100, 9],
                                                         "dtype": "<f8"}))
    rc, log = rec.finish()
    assert rc == 1, log
    assert "with 0 of 2 windows, nothing saved; skipped 1 invalid (1 invalid_dtype)" in log
    assert not out.exists()


def test_a_signal_saves_what_came(broker: Any, collector: Collector, tmp_path: Path) -> None:
    out = tmp_path / "calib.npy"
    rec = Recorder(broker.port, "--count", "10", "--out", str(out), "--timeout", "0")
    rec.wait_recording()
    collector.publish(TOPIC.format("s1"), encode_window(window(1)))
    collector.publish(TOPIC.format("s1"), encode_window(window(2)))
    # Not a terminal: a line per tenth done, so with 10 windows a line for each.
    wait_until(lambda: any("2/10 windows" in line for line in rec.lines), 10, "two windows")
    rec.proc.send_signal(signal.SIGINT)
    rc, log = rec.finish()
    assert rc == 1 and "stopped by a signal with 2 of 10 windows" in log, log
    assert np.load(out).shape == (2, 100, 9)


def test_window_shape_from_the_environment(
    broker: Any, collector: Collector, tmp_path: Path
) -> None:
    out = tmp_path / "small.npy"
    rec = Recorder(broker.port, "--count", "1", "--out", str(out), "--timeout", "20",
                   WINDOW_LENGTH="50", CHANNELS="6")
    rec.wait_recording()
    collector.publish(TOPIC.format("s1"), encode_window(window(1)))  # [100, 9]: wrong here
    small = np.arange(300, dtype=np.float32).reshape(50, 6)
    collector.publish(TOPIC.format("s1"), encode_window(small))
    rc, log = rec.finish()
    assert rc == 0, log
    np.testing.assert_array_equal(np.load(out), small[None])
    assert "1 invalid_shape" in log


def test_help_bad_arguments_and_bad_settings(tmp_path: Path) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker.record", *args],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=30, cwd=REPO)

    helped = run("--help")
    assert helped.returncode == 0
    for flag in ("--count", "--out", "--timeout", "MQTT_"):
        assert flag in helped.stdout
    bad_port = run("--out", str(tmp_path / "c.npy"), MQTT_PORT="not-a-port")
    assert bad_port.returncode == 2
    lines = bad_port.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hailo-record: bad setting: MQTT_PORT")
    assert run("--count", "0").returncode == 2
    no_dir = run("--out", str(tmp_path / "missing" / "c.npy"))
    assert no_dir.returncode == 2 and "--out: no such directory" in no_dir.stderr


def test_no_broker_is_a_clear_failure(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    proc = subprocess.run(
        [sys.executable, "-m", "worker.record", "--out", str(tmp_path / "c.npy"),
         "--timeout", "1"],
        env={**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(port)},
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert proc.returncode == 1
    assert f"cannot subscribe at 127.0.0.1:{port}" in proc.stderr
    assert not (tmp_path / "c.npy").exists()
