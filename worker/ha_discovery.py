"""Home Assistant MQTT discovery (HA_DISCOVERY): the retained configs that make the worker and
every sensor it serves appear in Home Assistant by themselves (CONTRACT.md, "Home Assistant").

Each entity is one retained JSON config on `<prefix>/<component>/<node_id>/<object_id>/config`,
in the schema of Home Assistant's MQTT integration; an empty retained payload removes it. The
entities read what the worker already publishes: its status (`hailo/<worker_id>/status`) and the
sensors' summaries (`infer/<sensor_id>/summary`); nothing extra is published per window. A
config depends only on the ids and settings, so a restart, or another worker serving the same
sensor, re-sends the same bytes: Home Assistant sees no change and never duplicates an entity.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from worker import __version__
from worker.settings import WorkerSettings

ORIGIN = {"name": "hailo-edge-worker", "sw_version": __version__}
WORKER_NODE = "hailo_worker_"
SENSOR_NODE = "hailo_sensor_"
# The worker is there while it says so; `offline` (its last will) and `stopped` are not.
AVAILABLE = ("{{ 'online' if value_json.state in ('online', 'degraded', 'starting') "
             "else 'offline' }}")


def _optional(key: str) -> str:
    """A value that may be missing from the payload: Home Assistant shows `None` as unknown."""
    return f"{{{{ value_json.{key} if value_json.{key} is defined else None }}}}"


# (component, object_id, name, value_template, extra keys) of the worker's entities.
WORKER_ENTITIES: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    ("sensor", "state", "State", "{{ value_json.state }}", {"icon": "mdi:state-machine"}),
    ("sensor", "mode", "Mode", "{{ value_json.mode }}", {"icon": "mdi:chip"}),
    ("sensor", "queue_depth", "Queue depth", "{{ value_json.queue_depth }}",
     {"state_class": "measurement", "unit_of_measurement": "windows", "icon": "mdi:tray-full"}),
    ("binary_sensor", "backpressure", "Backpressure",
     "{{ 'ON' if value_json.backpressure else 'OFF' }}", {"device_class": "problem"}),
    ("sensor", "windows", "Windows", "{{ value_json.windows_total }}",
     {"state_class": "total_increasing", "unit_of_measurement": "windows",
      "icon": "mdi:counter"}),
    ("sensor", "errors", "Errors", "{{ value_json.errors_total }}",
     {"state_class": "total_increasing", "unit_of_measurement": "errors",
      "icon": "mdi:alert-circle-outline"}),
    ("sensor", "temperature", "Temperature", _optional("temperature_c"),
     {"device_class": "temperature", "state_class": "measurement",
      "unit_of_measurement": "°C", "entity_category": "diagnostic"}),
)
SENSOR_ENTITIES: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    ("sensor", "top_motif", "Top motif", _optional("top_motif"), {"icon": "mdi:shape"}),
    ("sensor", "latency", "Latency", _optional("latency_ms"),
     {"device_class": "duration", "state_class": "measurement", "unit_of_measurement": "ms"}),
    ("sensor", "windows_per_s", "Windows per second", "{{ value_json.windows_per_s }}",
     {"state_class": "measurement", "unit_of_measurement": "windows/s",
      "icon": "mdi:speedometer"}),
)


def node_id(kind: str, name: str) -> str:
    """`kind` + `name` as Home Assistant's ids allow ([a-zA-Z0-9_-]); a name that had to be
    changed gets a hash of itself, so two names never share one id."""
    safe = re.sub(r"[^a-zA-Z0-9_-]", "_", name)
    if safe != name:
        safe += f"_{zlib.crc32(name.encode()):08x}"
    return kind + safe


class Discovery:
    """The configs of one worker and of the sensors it has announced.

    Args:
        prefix: HA_DISCOVERY_PREFIX.
        worker_id, model: the worker device's identity.
        status_topic: where the worker's entities read.
        sensor_expire_s: a sensor whose summary has not changed for this long is shown
            unavailable (it stopped sending; a summary comes whenever it has news).
    """

    def __init__(self, prefix: str, worker_id: str, model: str, status_topic: str,
                 sensor_expire_s: int) -> None:
        self.prefix = prefix.rstrip("/")
        self.birth_topic = f"{self.prefix}/status"
        self.worker_id, self.model, self.status_topic = worker_id, model, status_topic
        self.sensor_expire_s = sensor_expire_s
        self.announced: set[str] = set()

    def worker_configs(self) -> list[tuple[str, bytes]]:
        node = node_id(WORKER_NODE, self.worker_id)
        device = {"identifiers": [node], "name": f"Hailo worker {self.worker_id}",
                  "manufacturer": "hailo-edge-worker", "model": self.model,
                  "sw_version": __version__}
        availability = {"availability": [{"topic": self.status_topic,
                                          "value_template": AVAILABLE}]}
        # The state entity has no availability: it shows `offline` or `stopped` itself.
        return [self._config(component, node, object_id, name, self.status_topic, template,
                             device, {**extra, **({} if object_id == "state" else availability)})
                for component, object_id, name, template, extra in WORKER_ENTITIES]

    def sensor_configs(self, sensor_id: str) -> list[tuple[str, bytes]]:
        node = node_id(SENSOR_NODE, sensor_id)
        device = {"identifiers": [node], "name": f"IMU sensor {sensor_id}",
                  "manufacturer": "hailo-edge-worker", "model": "IMU sensor"}
        topic = f"infer/{sensor_id}/summary"
        return [self._config(component, node, object_id, name, topic, template, device,
                             {**extra, "expire_after": self.sensor_expire_s})
                for component, object_id, name, template, extra in SENSOR_ENTITIES]

    def new_sensors(self, sensor_ids: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Configs of the sensors not announced yet (each is announced once per process)."""
        for sensor_id in sensor_ids:
            if sensor_id not in self.announced:
                self.announced.add(sensor_id)
                yield from self.sensor_configs(sensor_id)

    def everything(self) -> Iterator[tuple[str, bytes]]:
        """Every config again: after a (re)connect, or when Home Assistant says it started."""
        yield from self.worker_configs()
        for sensor_id in sorted(self.announced):
            yield from self.sensor_configs(sensor_id)

    def ours(self, topic: str, payload: bytes) -> bool:
        """Whether a retained config is this worker's, or a sensor's announced by any worker of
        this service (what `--ha-forget` removes)."""
        try:
            doc = json.loads(payload)
            origin, unique_id = doc["origin"]["name"], str(doc["unique_id"])
        except (ValueError, KeyError, TypeError):
            return False
        worker_prefix = node_id(WORKER_NODE, self.worker_id) + "_"
        return origin == ORIGIN["name"] and topic.startswith(self.prefix + "/") and (
            unique_id.startswith(worker_prefix) or unique_id.startswith(SENSOR_NODE))

    def _config(self, component: str, node: str, object_id: str, name: str, state_topic: str,
                template: str, device: dict[str, Any], extra: dict[str, Any]
                ) -> tuple[str, bytes]:
        doc = {"name": name, "unique_id": f"{node}_{object_id}", "state_topic": state_topic,
               "value_template": template, "device": device, "origin": ORIGIN, **extra}
        topic = f"{self.prefix}/{component}/{node}/{object_id}/config"
        return topic, json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()


QUIET_S = 1.0  # retained configs come in a rush after the SUBACK; this long without one: done
FORGET_LIMIT_S = 15.0


def forget(settings: WorkerSettings) -> int:
    """`hailo-worker --ha-forget`: remove this worker's configs and every sensor's announced
    by this service, with empty retained payloads. Returns how many topics were cleared.

    It connects as the worker (the shipped broker binds a client id to its user), so run it
    with the worker stopped; it resumes and leaves the worker's session as it found it, and
    acknowledges no window (one handed to it is redelivered to the worker).
    """
    import threading
    import time

    from worker.mqtt_link import MqttLink, frozen

    discovery = Discovery(settings.ha_discovery_prefix, settings.worker_id, "",
                          settings.status_topic, 0)
    found: set[str] = {topic for topic, _ in discovery.worker_configs()}
    last = [time.monotonic()]
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.retain and discovery.ours(msg.topic, msg.payload):
            with lock:
                found.add(msg.topic)
                last[0] = time.monotonic()

    link = MqttLink(settings, client_id=settings.worker_id,
                    subscriptions=[(f"{discovery.prefix}/+/+/+/config", 0)],
                    clean_start=False, session_expiry_s=settings.session_expiry_s or 0,
                    manual_ack=True, receive_maximum=1)
    link.client.on_message = on_message
    link.start()
    try:
        if not link.wait_connected(FORGET_LIMIT_S):
            raise ConnectionError(f"no broker at {settings.mqtt_host}:{settings.mqtt_port}: "
                                  f"{link.last_error}")
        last[0] = time.monotonic()
        deadline = time.monotonic() + FORGET_LIMIT_S
        while time.monotonic() - last[0] < QUIET_S and time.monotonic() < deadline:
            time.sleep(0.1)
        with lock:
            topics = sorted(found)
        props = frozen("application/json")
        for topic in topics:
            link.publish(topic, b"", qos=1, retain=True, props=props)
        if not link.wait_all_acked(FORGET_LIMIT_S):
            raise ConnectionError("the broker did not acknowledge every removal")
    finally:
        link.stop()
    return len(topics)
