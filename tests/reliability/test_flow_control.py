"""Flow control, expiry and the intake's hardening, with the real worker and a real Mosquitto.

Loaded the way sensors load it: open loop (publishers never wait for answers), in bursts, and
with a backlog waiting for a restarted worker. The worker holds at most QUEUE_MAX windows and
reads no more meanwhile, so nothing is shed for lack of room (CONTRACT.md, "Flow control").
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
from broker_util import Broker, free_port
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import Collector, WorkerProcess, wait_until

from reliability.double import write_control
from reliability.probes import metric
from worker.wire import encode_window

StartWorker = Callable[..., WorkerProcess]
X = np.random.default_rng(3).standard_normal((100, 9)).astype(np.float32)


class Publisher:
    """A sensor gateway publishing open loop: as fast as the broker acknowledges, never waiting
    for an answer. Counts the broker's PUBACKs."""

    def __init__(self, port: int) -> None:
        self.acked = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"pub-{free_port()}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, *args: Any) -> None:
        with self._lock:
            self.acked += 1

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                expiry_s: int | None = None) -> None:
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = expiry_s
        self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def burst(self, sensors: int, per_sensor: int, **kw: Any) -> None:
        """Windows seq 0.. for each of `sensors` sensors, interleaved, all queued at once."""
        for seq in range(per_sensor):
            payload = encode_window(X, seq=seq)
            for s in range(sensors):
                self.publish(f"imu/burst{s}/window", payload, **kw)

    def wait_acked(self, n: int, timeout: float) -> None:
        wait_until(lambda: self.acked >= n, timeout, f"the broker to acknowledge {n} windows")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _by_sensor(answers: list[Any]) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    for m in answers:
        seqs.setdefault(m.topic.split("/")[1], []).append(m.doc()["seq"])
    return seqs


def test_an_open_loop_burst_of_20000_windows_is_answered_in_full_in_order(
    start_worker: StartWorker, collector: Collector, broker: Broker
) -> None:
    """Issue 12: the same burst, on the shedding worker, was answered 40% `overloaded`."""
    start_worker(worker_id="w-burst")
    pub = Publisher(broker.port)
    sensors, per_sensor = 4, 5000
    started = time.monotonic()
    pub.burst(sensors, per_sensor)
    n = sensors * per_sensor
    answers = collector.wait_answers(n, timeout=180)
    took = time.monotonic() - started
    pub.wait_acked(n, 30)
    pub.close()
    codes = Counter(m.topic.rsplit("/", 1)[1] for m in answers)
    print(f"\n{n} windows open loop: {dict(codes)} in {took:.1f} s ({n / took:.0f}/s)")
    assert codes == {"result": n}
    assert _by_sensor(answers) == {f"burst{s}": list(range(per_sensor)) for s in range(sensors)}


def test_a_restart_backlog_of_6000_windows_is_answered_in_full(
    start_worker: StartWorker, collector: Collector, broker: Broker
) -> None:
    """Issue 12: a worker restarted after an outage answered everything past QUEUE_MAX
    `overloaded`. Its session keeps the backlog in the broker; it now takes it QUEUE_MAX at a
    time (its Receive Maximum) and answers it all."""
    w = start_worker(worker_id="w-backlog", queue_max=256)
    w.kill()  # kill -9: its session stays, the broker queues for it
    pub = Publisher(broker.port)
    pub.burst(3, 2000)
    pub.wait_acked(6000, 60)
    pub.close()
    collector.clear()
    started = time.monotonic()
    start_worker(worker_id="w-backlog", queue_max=256, wait_state=None)
    answers = collector.wait_answers(6000, timeout=180)
    took = time.monotonic() - started
    codes = Counter(m.topic.rsplit("/", 1)[1] for m in answers)
    print(f"\nbacklog of 6000 answered in {took:.1f} s from the restart: {dict(codes)}")
    assert codes == {"result": 6000}
    assert _by_sensor(answers) == {f"burst{s}": list(range(2000)) for s in range(3)}


def test_backpressure_is_reported_while_full_and_cleared_after(
    start_worker: StartWorker, collector: Collector, broker: Broker, hef: Path
) -> None:
    port = free_port()
    start_worker(worker_id="w-bp", infer_mode="hailo", hef_path=hef, hailo_double_latency_ms=20,
                 batch_max_size=1, queue_max=8, metrics_port=port)
    pub = Publisher(broker.port)
    pub.burst(1, 150, qos=0)  # QoS 0: only the worker's not reading holds these back
    answers = collector.wait_answers(150, timeout=60)
    pub.close()
    assert [m.topic for m in answers] == ["infer/burst0/result"] * 150

    def flags() -> list[bool]:
        return [d["backpressure"] for d in collector.statuses("w-bp") if "backpressure" in d]

    wait_until(lambda: flags()[-1] is False, 10, "a status with backpressure false")
    assert True in flags(), flags()  # and the last one, after the drain, says false
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    held = metric(text, "hailo_worker_backpressure_seconds_total")
    assert held is not None and held > 0.5, held  # 150 windows at 20 ms, 8 held at most


def test_windows_that_expire_in_the_worker_are_answered_overloaded_and_never_run(
    start_worker: StartWorker, collector: Collector, broker: Broker, hef: Path, tmp_path: Path
) -> None:
    events = tmp_path / "double.log"
    start_worker(worker_id="w-exp", infer_mode="hailo", hef_path=hef, batch_max_size=1,
                 hailo_double_latency_ms=150, hailo_double_log=events)
    pub = Publisher(broker.port)
    pub.burst(1, 30, expiry_s=1)  # 30 x 150 ms: most expire while they wait in the worker
    answers = collector.wait_answers(30, timeout=60)
    pub.close()
    docs = [m.doc() for m in answers]
    overloaded = [d for d in docs if d.get("error") == "overloaded"]
    results = [d for d in docs if "latent" in d]
    print(f"\n{len(results)} results, {len(overloaded)} expired")
    assert len(results) + len(overloaded) == 30
    assert len(overloaded) >= 10 and len(results) >= 1
    assert all("expired" in d["detail"] and "seq" in d for d in overloaded)
    assert sorted(d["seq"] for d in docs) == list(range(30))
    run = [json.loads(line) for line in events.read_text().splitlines()]
    frames = sum(e["frames"] for e in run if e["event"] == "run_async")
    assert frames == len(results) + 1  # the warm-up window, and never an expired one


def test_an_ack_belongs_to_the_connection_its_window_came_on(
    start_worker: StartWorker, collector: Collector, broker: Broker, hef: Path
) -> None:
    """Issue 16, item 2: after a broker restart without persistence, the worker acknowledged
    the new session's windows with the old session's message ids, so a kill -9 then lost them
    (11 of 15). Now the old windows are answered but never acknowledged on the new connection."""
    w = start_worker(worker_id="w-gen", infer_mode="hailo", hef_path=hef, batch_max_size=1,
                     hailo_double_latency_ms=200)
    pub = Publisher(broker.port)
    for seq in range(15):
        pub.publish("imu/old/window", encode_window(X, seq=seq))
    pub.wait_acked(15, 10)
    pub.close()
    time.sleep(0.5)
    collector.clear()
    broker.restart()  # dev.conf: no persistence, so every session is gone
    collector.wait_state("w-gen", "online", timeout=30)  # the status again, on the new connection
    pub = Publisher(broker.port)
    for seq in range(15):
        pub.publish("imu/new/window", encode_window(X, seq=seq))
    pub.wait_acked(15, 10)
    time.sleep(2.0)  # old windows answered meanwhile, on the new connection
    w.kill()
    pub.close()
    start_worker(worker_id="w-gen", infer_mode="hailo", hef_path=hef, batch_max_size=1,
                 hailo_double_latency_ms=1)
    wait_until(lambda: {m.doc()["seq"] for m in collector.on("infer/new/")} == set(range(15)),
               30, "every new window answered")


def test_a_retained_window_is_answered_once_never_again_at_a_start(
    start_worker: StartWorker, collector: Collector, broker: Broker
) -> None:
    """Issue 16, item 6: a retained window was answered again at every worker start."""
    w = start_worker(worker_id="w-ret")
    pub = Publisher(broker.port)
    pub.publish("imu/ret/window", encode_window(X, seq=7), retain=True)
    collector.wait_answers(1)
    assert w.stop() == 0
    start_worker(worker_id="w-ret")  # the same session
    start_worker(worker_id="w-ret2")  # and a new one
    time.sleep(1.5)
    pub.close()
    assert len(collector.on("infer/ret/")) == 1


def test_a_hung_reopen_holds_up_neither_the_fallback_nor_the_stop(
    start_worker: StartWorker, collector: Collector, broker: Broker, hef: Path, tmp_path: Path
) -> None:
    """Issue 16, item 7: a reopen hung in the driver held the backend's lock while fallback
    batches waited behind it, each attempt added a blocked thread, and SIGTERM hung."""
    control, events = tmp_path / "control.json", tmp_path / "double.log"
    write_control(control)
    w = start_worker(worker_id="w-hang", infer_mode="hailo", hef_path=hef,
                     hailo_fallback="stub", device_timeout_ms=200, hailo_double_control=control,
                     hailo_double_log=events)
    write_control(control, device_lost="closed", open_hangs=True)
    pub = Publisher(broker.port)
    pub.publish("imu/h/window", encode_window(X, seq=0))
    collector.wait_state("w-hang", "degraded", timeout=10)
    collector.clear()
    for seq in range(1, 41):  # 8 s while the reopen hangs
        pub.publish("imu/h/window", encode_window(X, seq=seq))
        time.sleep(0.2)
    answers = collector.wait_answers(40, timeout=10)
    latencies = [m.doc()["latency_ms"] for m in answers if "latency_ms" in m.doc()]
    assert len(latencies) == 40 and max(latencies) < 500, latencies  # the fallback, unhindered
    log = [json.loads(line) for line in events.read_text().splitlines()]
    assert sum(e["event"] == "vdevice_open_hangs" for e in log) == 1  # one attempt at a time
    assert any("hangs" in d.get("detail", "") for d in collector.statuses("w-hang"))
    pub.close()
    began = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0
    assert time.monotonic() - began < 15
