"""`hailo-sim` against the real worker and broker: its answers, its expiry, its progress line."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from broker_util import Broker
from support import REPO, Collector, WorkerProcess


def _sim(port: int, *args: str) -> subprocess.Popen[str]:
    env = {"MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-m", "worker.sim", "--seed", "1", *args],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def test_sim_windows_are_answered_and_carry_the_expiry_asked_for(
    start_worker: Callable[..., WorkerProcess], broker: Broker
) -> None:
    start_worker()
    windows = Collector(broker.port, topics=("imu/+/window",))
    try:
        sim = _sim(broker.port, "--sensors", "2", "--rate", "20", "--count", "5",
                   "--expiry", "30", "--quiet")
        _, err = sim.communicate(timeout=30)
        assert sim.returncode == 0, err
        assert "sent 10, results 10, errors 0, waiting 0" in err, err
        seen = windows.on("imu/")
        assert len(seen) == 10
        assert all(0 < m.properties.MessageExpiryInterval <= 30 for m in seen)
    finally:
        windows.close()


def test_sim_says_when_it_is_disconnected_and_reconnects_by_itself(broker: Broker) -> None:
    sim = _sim(broker.port, "--sensors", "1", "--rate", "5", "--duration", "8")
    try:
        time.sleep(2)
        broker.stop()
        time.sleep(2.5)
        broker.start()
        _, err = sim.communicate(timeout=30)
    finally:
        sim.kill()
    assert "DISCONNECTED" in err, err
    last = err.strip().splitlines()[-1]
    assert "DISCONNECTED" not in last, err  # connected again by the end
