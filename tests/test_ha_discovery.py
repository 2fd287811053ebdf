"""Home Assistant discovery (HA_DISCOVERY) with the real worker and a real Mosquitto: the
retained configs, their templates rendered on real payloads, re-announcement after a restart
and on Home Assistant's birth message, and `--ha-forget`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import Collector, WorkerProcess, wait_until

from worker import wire

PREFIX = "homeassistant"
WORKER_ENTITIES = {("sensor", "state"), ("sensor", "mode"), ("sensor", "queue_depth"),
                   ("binary_sensor", "backpressure"), ("sensor", "windows"), ("sensor", "errors"),
                   ("sensor", "temperature")}
SENSOR_ENTITIES = {("sensor", "top_motif"), ("sensor", "latency"), ("sensor", "windows_per_s")}
HA = {"summary_interval_s": "0.2", "ha_discovery": "true"}
# Home Assistant renders with its own Jinja environment; these templates use nothing beyond
# plain Jinja2, so a plain environment renders them as Home Assistant would.
JINJA = jinja2.Environment(undefined=jinja2.Undefined, autoescape=False)


def render(template: str, payload: bytes) -> str:
    """What Home Assistant's `async_render_with_possible_json_value` gives for `payload`."""
    value = payload.decode()
    try:
        value_json: Any = json.loads(value)
    except ValueError:
        value_json = None
    return JINJA.from_string(template).render(value=value, value_json=value_json).strip()


def window(seed: int) -> bytes:
    x = np.random.default_rng(seed).standard_normal((100, 9)).astype(np.float32)
    return wire.encode_window(x, seq=seed)


def configs(collector: Collector) -> dict[str, dict[str, Any]]:
    """The latest config on each discovery topic (empty payloads: removed)."""
    latest: dict[str, bytes] = {}
    for m in collector.on(f"{PREFIX}/"):
        if m.topic.endswith("/config"):
            latest[m.topic] = m.payload
    return {t: json.loads(p) for t, p in latest.items() if p}


def retained(port: int, pattern: str = f"{PREFIX}/#", settle_s: float = 1.0) -> dict[str, bytes]:
    """What a client subscribing now is handed as retained."""
    fresh = Collector(port, topics=(pattern,))
    try:
        time.sleep(settle_s)
        return {m.topic: m.payload for m in fresh.messages if m.retain}
    finally:
        fresh.close()


def latest(collector: Collector, topic: str) -> bytes:
    found = [m.payload for m in collector.on(topic) if m.topic == topic]
    assert found, f"nothing on {topic}"
    return found[-1]


@pytest.fixture
def ha_collector(broker: Any) -> Iterator[Collector]:
    c = Collector(broker.port, topics=("infer/#", "hailo/+/status", f"{PREFIX}/#"))
    yield c
    c.close()


def test_worker_and_sensors_are_announced_with_templates_that_render(
    broker: Any, ha_collector: Collector, tmp_path: Path
) -> None:
    w = WorkerProcess(broker.port, worker_id="pi5-a", log_dir=tmp_path,
                      **HA).start()
    try:
        ha_collector.wait_state("pi5-a", "online")
        sensors = ["kitchen", "hall.1"]  # "." is not allowed in a Home Assistant id
        for i, sensor in enumerate(sensors):
            ha_collector.publish(f"imu/{sensor}/window", window(i))
        ha_collector.publish("imu/broken/window", b"not msgpack")  # errors only, no result
        wait_until(lambda: len(configs(ha_collector)) == 7 + 3 * 3, 10, "every config")
        wait_until(lambda: all(ha_collector.on(f"infer/{s}/summary")
                               for s in [*sensors, "broken"]), 10, "the summaries")
        found = configs(ha_collector)
        got = {(t.split("/")[1], t.split("/")[3]) for t in found}
        assert got == WORKER_ENTITIES | SENSOR_ENTITIES
        unique_ids = [c["unique_id"] for c in found.values()]
        assert len(set(unique_ids)) == len(unique_ids) == 16
        for topic, config in found.items():
            _, component, node, object_id, _ = topic.split("/")
            assert component in ("sensor", "binary_sensor")
            assert config["unique_id"] == f"{node}_{object_id}"
            assert set(node) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                    "0123456789_-"), node
            assert config["origin"]["name"] == "hailo-edge-worker"
            assert config["device"]["identifiers"] == [node]
        # They are retained: Home Assistant started later still finds them.
        assert set(retained(broker.port)) >= set(found)

        status = latest(ha_collector, "hailo/pi5-a/status")
        doc = json.loads(status)
        worker_configs = {t.split("/")[3]: c for t, c in found.items()
                          if c["state_topic"] == "hailo/pi5-a/status"}
        assert set(worker_configs) == {o for _, o in WORKER_ENTITIES}
        shown = {o: render(c["value_template"], status) for o, c in worker_configs.items()}
        assert shown == {"state": "online", "mode": "stub", "queue_depth": str(doc["queue_depth"]),
                         "backpressure": "OFF", "windows": str(doc["windows_total"]),
                         "errors": str(doc["errors_total"]), "temperature": "None"}
        assert doc["windows_total"] >= 3 and doc["errors_total"] >= 1
        device = worker_configs["state"]["device"]
        assert device["name"] == "Hailo worker pi5-a" and device["model"] == doc["model"]
        assert device["sw_version"] == doc["version"]
        assert "availability" not in worker_configs["state"]  # it shows offline itself
        for object_id, config in worker_configs.items():
            if object_id != "state":
                (avail,) = config["availability"]
                assert avail["topic"] == "hailo/pi5-a/status"
                assert render(avail["value_template"], status) == "online"
        assert worker_configs["windows"]["state_class"] == "total_increasing"
        assert worker_configs["errors"]["state_class"] == "total_increasing"

        for sensor in sensors:
            summary = latest(ha_collector, f"infer/{sensor}/summary")
            sdoc = json.loads(summary)
            mine = {t.split("/")[3]: c for t, c in found.items()
                    if c["state_topic"] == f"infer/{sensor}/summary"}
            assert set(mine) == {o for _, o in SENSOR_ENTITIES}
            shown = {o: render(c["value_template"], summary) for o, c in mine.items()}
            assert shown == {"top_motif": str(sdoc["top_motif"]),
                             "latency": str(sdoc["latency_ms"]),
                             "windows_per_s": str(sdoc["windows_per_s"])}
            assert 0 <= sdoc["top_motif"] < 12 and float(shown["latency"]) > 0
            assert mine["top_motif"]["device"]["name"] == f"IMU sensor {sensor}"
        # A sensor with errors only has no top motif or latency yet: unknown, not an error.
        summary = latest(ha_collector, "infer/broken/summary")
        mine = {t.split("/")[3]: c for t, c in found.items()
                if c["state_topic"] == "infer/broken/summary"}
        assert render(mine["top_motif"]["value_template"], summary) == "None"
        assert render(mine["latency"]["value_template"], summary) == "None"

        # A crashed worker's will makes its entities unavailable; its state says offline.
        w.kill()
        ha_collector.wait_state("pi5-a", "offline", timeout=10)
        will = latest(ha_collector, "hailo/pi5-a/status")
        for object_id, config in worker_configs.items():
            if object_id == "state":
                assert render(config["value_template"], will) == "offline"
            else:
                assert render(config["availability"][0]["value_template"], will) == "offline"
    finally:
        w.kill()


def test_restart_and_birth_reannounce_the_same_entities_and_forget_clears_them(
    broker: Any, ha_collector: Collector, tmp_path: Path
) -> None:
    w = WorkerProcess(broker.port, worker_id="pi5-b", log_dir=tmp_path, **HA).start()
    ha_collector.wait_state("pi5-b", "online")
    ha_collector.publish("imu/porch/window", window(1))
    wait_until(lambda: len(configs(ha_collector)) == 10, 10, "the worker's and porch's configs")
    first = {t: m for t, m in configs(ha_collector).items()}
    assert w.stop() == 0

    ha_collector.clear()
    w = WorkerProcess(broker.port, worker_id="pi5-b", log_dir=tmp_path, **HA).start()
    try:
        ha_collector.wait_state("pi5-b", "online")
        wait_until(lambda: len(configs(ha_collector)) == 7, 10, "the worker's configs again")
        ha_collector.publish("imu/porch/window", window(2))
        wait_until(lambda: len(configs(ha_collector)) == 10, 10, "porch announced again")
        assert configs(ha_collector) == first  # same topics, same unique_ids, same bytes

        # Home Assistant (re)starting publishes its birth message: everything is sent again.
        ha_collector.clear()
        ha_collector.publish(f"{PREFIX}/status", b"online", qos=0)
        wait_until(lambda: len(configs(ha_collector)) == 10, 10, "a re-send after the birth")
        assert configs(ha_collector) == first
        ha_collector.publish(f"{PREFIX}/status", b"offline", qos=0)  # HA's will: nothing to do
        time.sleep(0.5)
        assert len([m for m in ha_collector.on(f"{PREFIX}/") if m.topic.endswith("/config")]) == 10
    finally:
        assert w.stop() == 0

    env = {**w.env, "MQTT_PORT": str(broker.port)}
    done = subprocess.run([sys.executable, "-m", "worker", "--ha-forget"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"removed 10 Home Assistant discovery configs under {PREFIX}/"
    assert not [t for t in retained(broker.port) if t.endswith("/config")]


def test_a_thousand_sensors_are_announced_once_each(
    broker: Any, ha_collector: Collector, tmp_path: Path
) -> None:
    w = WorkerProcess(broker.port, worker_id="pi5-c", log_dir=tmp_path, **HA).start()
    try:
        ha_collector.wait_state("pi5-c", "online")
        payload = window(3)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                             client_id=f"many-{uuid.uuid4().hex[:6]}")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        for _ in range(2):  # a sensor seen again is not announced again
            infos = [client.publish(f"imu/n{i:04d}/window", payload, qos=1) for i in range(1000)]
            for info in infos:
                info.wait_for_publish(20)
        client.disconnect()
        client.loop_stop()
        wait_until(lambda: len(ha_collector.answers()) >= 2000, 60, "2000 answers")
        wait_until(lambda: len(configs(ha_collector)) == 7 + 3000, 30, "3007 configs")
        time.sleep(0.5)
        sent = [m.topic for m in ha_collector.on(f"{PREFIX}/") if m.topic.endswith("/config")]
        assert len(sent) == len(set(sent)) == 3007  # each config once
    finally:
        w.kill()
        subprocess.run([sys.executable, "-m", "worker", "--ha-forget"],
                       env={**w.env, "MQTT_PORT": str(broker.port)}, capture_output=True,
                       timeout=60, check=True)


def test_forget_without_a_broker_retries_then_says_so() -> None:
    env = {**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": "1", "WORKER_ID": "pi5-d"}
    done = subprocess.run([sys.executable, "-m", "worker", "--ha-forget"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    *retries, last = done.stderr.strip().splitlines()
    assert last.startswith("hailo-worker: --ha-forget failed: no broker at 127.0.0.1:1: "), last
    assert retries and all("cannot reach the broker" in line for line in retries), retries

