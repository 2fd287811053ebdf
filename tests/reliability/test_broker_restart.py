"""Mosquitto (with persistence) restarts under load: everyone reconnects, nothing is lost."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from broker_util import Broker
from support import BridgeProcess, Collector, WorkerProcess, wait_until

from reliability.accounting import Key, Ledger, Sensors
from reliability.brokers import start_persistent_broker
from reliability.probes import HttpProbe

DOWN_S = 2.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_persistent_broker(tmp_path)
    yield b
    b.stop()


def test_broker_restart_loses_no_qos1_window(
    broker: Broker, start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors], bridge: BridgeProcess,
) -> None:
    # A long status interval: a fresh status after the restart can only be the reconnect's.
    w = start_worker(worker_id="w-brk", status_interval_s=600)
    http = HttpProbe(bridge.url)
    wait_until(lambda: http.first_ok_after(0) is not None, 10, "the bridge to answer /infer")
    pub = sensors([f"b{i}" for i in range(3)]).start(rate=100)
    time.sleep(1.5)
    down_at, down_wall = time.monotonic(), time.time()
    broker.stop()
    time.sleep(DOWN_S)
    broker.start()
    up_at = time.monotonic()
    # The worker says so itself once it is back: its status is republished on reconnect.
    back_at = ledger.wait_state("w-brk", "online", after=up_at, timeout=40)
    time.sleep(1.5)
    wait_until(lambda: http.first_ok_after(up_at) is not None, 20, "the bridge to answer again")
    pub.stop()
    http.stop()
    bridge_ok_at = http.first_ok_after(up_at)
    ledger.wait_complete(40)
    report = ledger.report()

    def in_flight_at_the_restart(key: Key) -> bool:
        # Sent just before the broker went down: the worker's answer, or the sensor's window,
        # may have reached the old broker without its PUBACK coming back, and QoS 1 resends it
        # after the reconnect (an identical answer twice, or the window served twice).
        return down_at - 1 < ledger.published_at[key] < down_at + 1

    # Mosquitto sends the worker's will when it shuts down, and keeps it retained: the worker's
    # own republish on reconnect is what puts `online` back.
    after = [d for t, d, _ in ledger.statuses
             if t >= up_at and d.get("worker_id") == "w-brk" and d["state"] == "online"]
    first_after = min(a[0].t for k, a in ledger.snapshot().items()
                      if ledger.published_at[k] > down_at)
    resent = sum(1 for k in report.duplicates
                 if all(a.doc == ledger.answers[k][0].doc for a in ledger.answers[k]))
    print(f"\n{report.summary()}\nbroker down {up_at - down_at:.2f} s; worker online again "
          f"{back_at - up_at:.2f} s after the broker; first answer to a window sent during "
          f"the outage {first_after - up_at:.2f} s after the broker; bridge /infer 200 again "
          f"{(bridge_ok_at or 0) - up_at:.2f} s after; HTTP codes "
          f"{dict(Counter(code for _, code in http.seen))}; duplicated windows: "
          f"{resent} by an answer resent, {len(report.duplicates) - resent} served twice")
    report.assert_clean(allow_duplicate=in_flight_at_the_restart)
    assert report.outcomes == {"result": report.published}
    # The bridge answered before and after the outage, and only 200 or 503 in between.
    assert {code for _, code in http.seen} <= {200, 503}
    assert bridge_ok_at is not None
    assert any(datetime.fromisoformat(d["updated_at"]).timestamp() > down_wall for d in after)
    assert "session present: True" in w.log().split("connected to", 2)[-1], w.log()
    # A newcomer reads the retained status from the restarted broker.
    late = Collector(broker.port, topics=["hailo/w-brk/status"])
    wait_until(lambda: bool(late.on("hailo/w-brk/status")), 5, "retained status")
    assert json.loads(late.on("hailo/w-brk/status")[-1].payload)["state"] == "online"
    late.close()


def test_worker_started_before_the_broker_connects_when_it_comes(
    broker: Broker, start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors],
) -> None:
    # A Pi after a power cut: nothing says the worker starts after Mosquitto.
    broker.stop()
    w = start_worker(worker_id="w-early", wait_state=None)
    time.sleep(2.0)
    assert w.proc is not None and w.proc.poll() is None  # still trying, not given up
    up_at = time.monotonic()
    broker.start()
    online_at = ledger.wait_state("w-early", "online", after=up_at, timeout=40)
    pub = sensors(["e0", "e1"])
    for _ in range(100):
        pub.publish_window()
    ledger.wait_complete(20)
    report = ledger.report()
    print(f"\n{report.summary()}\nonline {online_at - up_at:.2f} s after the broker started")
    report.assert_clean()
    assert not report.duplicates
