"""The bridge's MQTT side: which workers are alive, and request/response with them.

One paho client (through MqttLink) per bridge process, under its own client id, clean session,
subscribed to `hailo/+/status` (the retained statuses), `infer/+/summary` (for the live page)
and `reply/<client id>/#`. An /infer window
goes to `imu/bridge/window` with ResponseTopic `reply/<client id>/infer` and a fresh
CorrelationData; the worker's answer is matched back by that correlation data to the asyncio
future of the request that sent it. Any number of requests can be in flight, with no lock
around any of them: paho's thread only pops the future and hands the payload to the event loop.

Exceptions:

    BridgeUnavailable      no answer can be had now (HTTP 503)
    ├── BrokerDown         not connected to the broker, or the connection dropped
    └── NoWorker           no worker is `online` with a fresh status
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import paho.mqtt.client as mqtt

from worker.bridge.metrics import BridgeMetrics
from worker.mqtt_link import MqttLink, properties
from worker.settings import BridgeSettings, ConfigError

log = logging.getLogger("worker.bridge")

SENSOR_ID = "bridge"
WINDOW_TOPIC = f"imu/{SENSOR_ID}/window"
STATUS_FILTER = "hailo/+/status"
SUMMARY_FILTER = "infer/+/summary"
MAX_SENSORS = 10_000  # what the page keeps; the broker's users bound the sensors anyway
WINDOW_CONTENT_TYPE = "application/msgpack"
LIVE_STATES = frozenset({"starting", "online", "degraded"})
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class BridgeUnavailable(Exception):
    """No answer can be had now; the message says why, for the HTTP client."""


class BrokerDown(BridgeUnavailable):
    pass


class NoWorker(BridgeUnavailable):
    pass


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    doc: dict[str, Any]
    seen_at: float
    """time.monotonic() of the status; a retained one is backdated by its `updated_at`."""
    generation: int
    """The connection it came in on: entries older than the last resync are gone from the broker."""

    @property
    def state(self) -> str:
        return str(self.doc.get("state"))


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    reason: str | None
    workers: list[dict[str, Any]]


def default_client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"bridge-{host}-{secrets.token_hex(3)}"


def assess(seen: Iterable[WorkerSeen], now: float, fresh_s: float,
           broker_error: str | None) -> Health:
    """The /healthz verdict: ok when at least one worker is `online` and fresh."""
    workers = sorted(seen, key=lambda w: str(w.doc.get("worker_id")))
    if broker_error is not None:
        return Health(False, f"broker unreachable: {broker_error}", [w.doc for w in workers])
    if not workers:
        return Health(False, f"no worker has published a status on {STATUS_FILTER}", [])
    fresh = [w for w in workers if now - w.seen_at <= fresh_s]
    if any(w.state == "online" for w in fresh):
        return Health(True, None, [w.doc for w in fresh if w.state in LIVE_STATES])
    states = []
    for w in workers:
        age = now - w.seen_at
        stale = "" if age <= fresh_s or w.state not in LIVE_STATES else (
            f" but stale (no status for {age:.0f} s; fresh means within {fresh_s:g} s)"
            if math.isfinite(age) else " but stale (retained, with no usable updated_at)")
        states.append(f"{w.doc.get('worker_id')} {w.state}{stale}")
    return Health(False, "no worker is online: " + ", ".join(states), [w.doc for w in workers])


def parse_status(payload: bytes) -> dict[str, Any] | None:
    """A status document, or None when it is not one (the bridge ignores it)."""
    try:
        doc = json.loads(payload, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("state"), str):
        return None
    return doc


def parse_summary(payload: bytes) -> dict[str, Any] | None:
    """A sensor summary, or None when it is not one."""
    try:
        doc = json.loads(payload, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _age(seconds: float) -> float | None:
    return round(seconds, 1) if math.isfinite(seconds) else None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity could not be served back as JSON


def retained_age(doc: dict[str, Any], now_wall: float) -> float:
    """Seconds since a retained status was written (inf when it does not say)."""
    stamp = doc.get("updated_at")
    if not isinstance(stamp, str):
        return math.inf
    try:
        written = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return math.inf
    if written.tzinfo is None:
        written = written.replace(tzinfo=timezone.utc)
    return max(0.0, now_wall - written.timestamp())


def _settle(future: asyncio.Future[bytes], payload: bytes) -> None:
    if not future.done():
        future.set_result(payload)


def _fail(future: asyncio.Future[bytes], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


Pending = tuple[asyncio.AbstractEventLoop, asyncio.Future[bytes]]


class BridgeMqtt:
    """The bridge's one MQTT client: the status table and the requests waiting for answers.

    Args:
        settings: broker, credentials, TLS and STATUS_INTERVAL_S (fresh = 3x it).
        client_id: overrides BRIDGE_CLIENT_ID and the generated `bridge-<host>-<random>`.
        metrics: where late replies are counted.
    """

    def __init__(self, settings: BridgeSettings, *, client_id: str | None = None,
                 metrics: BridgeMetrics | None = None) -> None:
        self.client_id = client_id or settings.bridge_client_id or default_client_id()
        if not _CLIENT_ID.match(self.client_id):
            raise ConfigError(
                f"BRIDGE_CLIENT_ID: must be 1-64 of A-Z a-z 0-9 _ . - (it is part of the reply "
                f"topic), got {self.client_id!r}")
        self.metrics = metrics or BridgeMetrics()
        self.fresh_s = 3 * settings.status_interval_s
        self.reply_topic = f"reply/{self.client_id}/infer"
        self._reply_prefix = f"reply/{self.client_id}/"
        self._sync_topic = f"reply/{self.client_id}/sync"  # never subscribed: see _on_connected
        self._workers: dict[str, WorkerSeen] = {}
        self._sensors: dict[str, tuple[dict[str, Any], float]] = {}  # summary, seen_at
        self._pending: dict[bytes, Pending] = {}
        # Fresh correlation data without a syscall per request: unique to this process (a
        # random prefix) and to the request (a counter); the replies come to our topic only.
        self._correlation_prefix = secrets.token_bytes(8)
        self._sequence = itertools.count()
        self._generation = 0
        self._synced = threading.Event()
        self.link = MqttLink(
            settings,
            client_id=self.client_id,
            subscriptions=[(STATUS_FILTER, 1), (SUMMARY_FILTER, 0),
                           (f"{self._reply_prefix}#", 1)],
            on_message=self._on_message,
            clean_start=True,
            session_expiry_s=0,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            logger=log,
        )
        self._sync_mid: int | None = None
        self.link.client.on_unsubscribe = self._on_unsubscribe

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.link.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until connected and every retained status has arrived (see _on_connected)."""
        return self._synced.wait(timeout)

    def stop(self) -> None:
        self.link.stop()
        self._fail_pending(BrokerDown("the bridge is shutting down"))

    @property
    def broker_error(self) -> str | None:
        return None if self.link.connected.is_set() else (self.link.last_error or "not connected")

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- health ------------------------------------------------------------------------------

    def health(self) -> Health:
        return assess(list(self._workers.values()), time.monotonic(), self.fresh_s,
                      self.broker_error)

    def online_count(self) -> int:
        now = time.monotonic()
        return sum(1 for w in list(self._workers.values())
                   if w.state == "online" and now - w.seen_at <= self.fresh_s)

    def snapshot(self) -> dict[str, Any]:
        """What the live page shows: every worker and sensor, with how long ago each reported."""
        now = time.monotonic()
        workers = []
        for seen in sorted(list(self._workers.values()), key=lambda w: str(w.doc.get("worker_id"))):
            age = now - seen.seen_at
            workers.append({**seen.doc, "age_s": _age(age),
                            "stale": seen.state in LIVE_STATES and age > self.fresh_s})
        sensors = [{**doc, "age_s": _age(now - seen_at)}
                   for _, (doc, seen_at) in sorted(list(self._sensors.items()))]
        return {"bridge": {"client_id": self.client_id, "connected": self.broker_error is None,
                           "error": self.broker_error, "fresh_s": self.fresh_s},
                "workers": workers, "sensors": sensors}

    # -- request / response ------------------------------------------------------------------

    async def request(self, window: bytes, timeout_s: float) -> bytes:
        """Publish a window and wait for its answer's payload.

        Raises BrokerDown or NoWorker at once when no answer can come, and
        asyncio.TimeoutError after `timeout_s`. The request is forgotten either way.
        """
        if not self.link.connected.is_set():
            raise BrokerDown(f"broker unreachable: {self.broker_error}")
        if not self.online_count():
            raise NoWorker(self.health().reason or "no worker is online")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        correlation = self._correlation_prefix + next(self._sequence).to_bytes(8, "big")
        # Registered before the publish: a fast answer must find its future.
        self._pending[correlation] = (loop, future)
        try:
            props = properties(WINDOW_CONTENT_TYPE, self.reply_topic, correlation)
            if not self.link.publish(WINDOW_TOPIC, window, qos=1, props=props):
                raise BrokerDown("the MQTT client could not queue the window")
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(correlation, None)

    def _fail_pending(self, exc: BridgeUnavailable) -> None:
        while self._pending:
            try:
                _, (loop, future) = self._pending.popitem()
            except KeyError:  # emptied by a request's own clean-up meanwhile
                break
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_fail, future, exc)

    # -- paho's network thread ---------------------------------------------------------------

    def _on_connected(self) -> None:
        # The broker queues the retained statuses for us while it handles our SUBSCRIBE, before
        # it reads our next packet: the answer to a later UNSUBSCRIBE (of a filter we never had:
        # no ACL needed, nothing published) comes after them. When it arrives the table is
        # complete, and entries from before this connection that were not resent are gone.
        self._generation += 1
        _, self._sync_mid = self.link.client.unsubscribe(self._sync_topic)

    def _on_disconnected(self, reason: str) -> None:
        self._fail_pending(BrokerDown(f"lost the broker connection: {reason}"))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic.startswith(self._reply_prefix):
                self._on_reply(msg)
            elif msg.topic.startswith("hailo/"):
                self._on_status(msg)
            elif msg.topic.startswith("infer/"):
                self._on_summary(msg)
        except Exception:  # nothing another client publishes may take the network thread down
            log.exception("unexpected failure on a message on %s", msg.topic)

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                        props: Any) -> None:
        if mid != self._sync_mid:
            return
        for worker_id, seen in list(self._workers.items()):
            if seen.generation < self._generation:
                self._workers.pop(worker_id, None)
        self._synced.set()

    def _on_reply(self, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        if correlation is None:
            log.debug("ignoring a reply without CorrelationData on %s", msg.topic)
            return
        entry = self._pending.pop(bytes(correlation), None)
        if entry is None:
            self.metrics.late_replies.inc()
            return
        loop, future = entry
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, future, bytes(msg.payload))

    def _on_summary(self, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 3 or parts[2] != "summary" or not parts[1]:
            return
        sensor_id = parts[1]
        if not msg.payload:
            self._sensors.pop(sensor_id, None)
            return
        doc = parse_summary(bytes(msg.payload))
        if doc is None:
            return
        doc["sensor_id"] = sensor_id  # the topic names the sensor, as for statuses
        seen_at = time.monotonic() - (retained_age(doc, time.time()) if msg.retain else 0.0)
        if sensor_id not in self._sensors and len(self._sensors) >= MAX_SENSORS:
            oldest = min(self._sensors, key=lambda k: self._sensors[k][1])
            self._sensors.pop(oldest, None)
        self._sensors[sensor_id] = (doc, seen_at)

    def _on_status(self, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 3 or not parts[1]:
            return
        worker_id = parts[1]
        if not msg.payload:  # a retained status cleared by an operator
            self._workers.pop(worker_id, None)
            return
        doc = parse_status(bytes(msg.payload))
        if doc is None:
            log.warning("ignoring a malformed status on %s", msg.topic)
            return
        doc["worker_id"] = worker_id  # the topic names the worker, as the broker's ACL does
        seen_at = time.monotonic()
        if msg.retain:
            # Delivered from the broker's store: it may be hours old. A live one is fresh now,
            # whatever the worker's clock says.
            seen_at -= retained_age(doc, time.time())
        before = self._workers.get(worker_id)
        self._workers[worker_id] = seen = WorkerSeen(doc, seen_at, self._generation)
        if before is None or before.state != seen.state:
            log.info("worker %s is %s%s", worker_id, seen.state,
                     f" ({doc['detail']})" if isinstance(doc.get("detail"), str) else "")
