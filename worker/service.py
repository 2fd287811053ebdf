"""The worker: broker -> intake -> queue -> scheduler -> backend -> answers.

Threads: the MQTT network thread reads and decodes each window (worker/intake.py), queues it
(worker/batcher.py), and between passes over the socket runs the batches that are due
(worker/scheduler.py) and answers them (worker/answer.py). It holds at most QUEUE_MAX windows
unanswered and reads no more meanwhile (worker/flow.py), so bursts and backlogs wait in the
broker instead of being dropped. A `hailo` batch runs on the device runner's thread
(worker/device.py); a lost device is reopened on a thread of its own (worker/supervisor.py).
The main thread refreshes the status and waits for a stop signal.

A QoS 1 window is acknowledged to the broker only after the broker has acknowledged every answer
to it, and only on the connection it came on, so a crash loses nothing: unacknowledged windows
are redelivered.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from paho.mqtt.subscribeoptions import SubscribeOptions

from worker import backends
from worker.answer import Answerer
from worker.backends.base import PIPELINE_DEPTH, Backend, InferenceError
from worker.batcher import BatchQueue
from worker.device import DeviceRunner
from worker.flow import FlowControl
from worker.ha_discovery import Discovery
from worker.intake import Intake, Job
from worker.metrics import WorkerMetrics
from worker.mqtt_link import MqttLink, frozen
from worker.scheduler import Scheduler
from worker.settings import WorkerSettings
from worker.status import State, Status, will_payload
from worker.summary import Summaries
from worker.supervisor import Supervisor

log = logging.getLogger("worker")

STOP_DRAIN_S = 10.0
UNSUBSCRIBE_WAIT_S = 2.0
STATUS_MIN_GAP_S = 1.0  # backpressure turning on and off is published at most this often


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        primary: Backend,
        fallback: Backend | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.primary = primary
        self.fallback = fallback
        self.metrics = metrics or WorkerMetrics()
        self.status = Status(
            worker_id=settings.worker_id,
            mode=primary.mode,
            model=primary.model_id,
            hef_sha256=_str_or_none(primary.info().get("hef_sha256")),
        )
        self.summaries = Summaries(settings.worker_id, settings.summary_interval_s)
        self.flow = FlowControl(settings.queue_max)
        self.queue: BatchQueue[Job] = BatchQueue(settings.batch_max_size,
                                                 settings.batch_max_wait_ms / 1000)
        self._status_props = frozen("application/json")
        self._status_lock = threading.Lock()
        self._status_sent = (0.0, False)  # when, and with which backpressure
        self._serving = False  # batches wait until the warm-up is done
        self._drained = threading.Event()
        # Retain Handling 2: a window someone published retained is never replayed to us.
        subscriptions: list[tuple[str, int | SubscribeOptions]] = [(
            settings.window_topic,
            SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))]
        self.discovery: Discovery | None = None
        if settings.ha_discovery:
            self.discovery = Discovery(
                settings.ha_discovery_prefix, settings.worker_id, primary.model_id,
                settings.status_topic, sensor_expire_s(settings))
            # QoS 0: Home Assistant sends its birth so, and it needs no acknowledgement of ours.
            subscriptions.append((self.discovery.birth_topic, 0))
        self.link = MqttLink(
            settings,
            client_id=settings.worker_id,
            subscriptions=subscriptions,
            clean_start=False,
            session_expiry_s=settings.session_expiry_s or 0,
            will=(settings.status_topic, will_payload(settings.worker_id)),
            manual_ack=True,
            receive_maximum=self.flow.receive_maximum,
            reading=self.flow.reading,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            on_tick=self._tick,
        )
        self.answers = Answerer(settings, self.link, self.flow, self.metrics, self.status,
                                self.summaries)
        self.intake = Intake(settings, self.link, self.flow, self.queue, self.answers)
        self.link.client.on_message = self.intake.on_message
        if self.discovery is not None:
            self.link.client.message_callback_add(self.discovery.birth_topic, self._on_birth)
        self.supervisor = Supervisor(primary, fallback, self.metrics, self._set_state,
                                     self.link.wake,
                                     hung_after_s=settings.device_timeout_ms / 1000 * 2 + 5)
        # Only a device runs beside the host: stub and cpu batches run on the network thread.
        runner = DeviceRunner(PIPELINE_DEPTH) if primary.mode == "hailo" else None
        # The watchdog's limit: the backend bounds each call by DEVICE_TIMEOUT_MS itself.
        self.scheduler = Scheduler(self.queue, self.supervisor, self.answers, self.metrics,
                                   runner, settings.device_timeout_ms / 1000 * 2 + 1,
                                   self.link.wake)

    # -- life cycle --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Serve until `stop` is set, then drain, publish `stopped` and disconnect. Returns 0."""
        self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        self.intake.accepting = True
        self.link.start()  # the status says `starting` until the warm-up is done
        self._warm_up()
        self._serving = True
        if not self.primary.available:
            self.supervisor.down("the device could not be opened at start")
        else:
            self._set_state("online")
            self.metrics.device_up.set(1)
        # Start-up garbage is long-lived: freezing it keeps full collections short.
        gc.collect()
        gc.freeze()
        log.info(
            "serving imu/+/window%s as %s (mode %s, model %s, holding at most %d windows)",
            " in a shared group" if self.settings.shared_group else "", self.settings.worker_id,
            self.status.mode, self.status.model, self.settings.queue_max,
        )
        while not stop.wait(self.settings.status_interval_s):
            self._refresh_device_facts()
            self.publish_status()
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        log.info("stopping: answering %d windows held", self.flow.unanswered)
        # In a group our session dies with us, and Mosquitto drops what it had handed us with
        # it: let the other members take new windows now, and keep accepting until the broker
        # confirms, since whatever it routed to us before the UNSUBSCRIBE comes ahead of UNSUBACK.
        if (self.settings.shared_group and self.link.connected.is_set()
                and not self.link.unsubscribe(self.settings.window_topic, UNSUBSCRIBE_WAIT_S)):
            log.warning("the broker did not confirm leaving the group in %.0f s",
                        UNSUBSCRIBE_WAIT_S)
        self.intake.accepting = False  # later arrivals stay unacknowledged: redelivered
        self.queue.close()
        self.link.wake()
        if not self._drained.wait(STOP_DRAIN_S):
            log.warning("%d windows were still held when the drain time ran out",
                        self.flow.unanswered)
        if not self.link.wait_all_acked(STOP_DRAIN_S / 2):
            log.warning("some answers were not acknowledged by the broker before stopping")
        self._set_state("stopped")
        self.link.wait_all_acked(2.0)
        self.link.stop()
        if self.scheduler.runner is not None:
            self.scheduler.runner.close()
        for backend in (self.primary, self.fallback):
            if backend is not None:
                backend.close()
        log.info("stopped")

    def _warm_up(self) -> None:
        """Run one window through the backend, so the first real one is not slow."""
        if not self.primary.available:
            return
        x = np.zeros((1, self.settings.window_length, self.settings.channels), np.float32)
        try:
            self.primary.infer(x)
        except InferenceError as exc:
            log.warning("warm-up failed: %s", exc)

    # -- the network thread, between passes over the socket -----------------------------------

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.intake.on_message(client, userdata, msg)  # for bench/bench_worker_cost.py

    def _tick(self) -> float:
        """Run what is due; return how long the network thread may sleep."""
        intake = self.intake
        if intake.arrived:
            self.metrics.windows.inc(intake.arrived)
            self.status.count(windows=intake.arrived)
            intake.arrived = 0
        if not self._serving:
            return 0.5
        now = time.monotonic()
        if added := self.flow.account(now):
            self.metrics.backpressure_seconds.inc(added)
        wait = self.scheduler.tick(now)
        self.metrics.queue_depth.set(len(self.queue))
        sent_at, sent_backpressure = self._status_sent
        if self.flow.backpressure != sent_backpressure and now - sent_at >= STATUS_MIN_GAP_S:
            self.publish_status()
        if self.summaries.new:
            if self.discovery is not None:
                self._announce(self.discovery.new_sensors(self.summaries.new))
            self.summaries.new.clear()
        for topic, payload in self.summaries.due(now):
            self.link.publish(topic, payload, qos=0, retain=True, props=self._status_props)
        wait = min(wait, self.summaries.wait_s(now))
        if self.queue.closed and self.scheduler.idle and not self.flow.unanswered:
            self._drained.set()
        self.flow.mark(time.monotonic())
        return wait

    # -- status ------------------------------------------------------------------------------

    def publish_status(self) -> None:
        # Only once on_connect has subscribed: paho would otherwise send a status queued during
        # the handshake ahead of the SUBSCRIBE, and `online` would be seen before windows flow.
        # Every (re)connect publishes the status anyway.
        if not self.link.connected.is_set():
            return
        with self._status_lock:
            backpressure = self.flow.backpressure
            doc = self.status.document(queue_depth=len(self.queue), backpressure=backpressure)
            self._status_sent = (time.monotonic(), backpressure)
            self.link.publish(
                self.settings.status_topic, json.dumps(doc).encode(), qos=1, retain=True,
                props=self._status_props,
            )

    def _set_state(self, state: State, **changes: Any) -> None:
        if self.status.set(state, **changes):
            log.info("state %s%s", state, f": {changes['detail']}" if changes.get("detail") else "")
            self.publish_status()

    def _on_connected(self) -> None:
        self.metrics.connected.set(1)
        self.flow.reconnected()
        if self.link.session_present and self.link.generation > 1:
            # The broker redelivers every window it had handed us unacknowledged: the copies
            # still queued here would only be answered twice.
            generation = self.link.generation
            stale = self.queue.discard(lambda job: job.qos > 0 and job.generation != generation)
            for job in stale:
                job.held = False
            self.flow.unanswered -= len(stale)
            if stale:
                log.info("%d queued windows will come again with the resumed session", len(stale))
        # A restarted broker may have lost the retained status: say it again on every connect.
        self.publish_status()
        if self.discovery is not None:  # and the discovery configs, for the same reason
            self._announce(self.discovery.everything())

    # -- Home Assistant ----------------------------------------------------------------------

    def _announce(self, configs: Iterable[tuple[str, bytes]]) -> None:
        for topic, payload in configs:
            self.link.publish(topic, payload, qos=1, retain=True, props=self._status_props)

    def _on_birth(self, client: Any, userdata: Any, msg: Any) -> None:
        # Home Assistant asks every device to announce itself again when it (re)starts.
        if self.discovery is not None and msg.payload == b"online":
            log.info("Home Assistant started: announcing the worker and %d sensors again",
                     len(self.discovery.announced))
            self._announce(self.discovery.everything())

    def _on_disconnected(self, reason: str) -> None:
        self.metrics.connected.set(0)

    def _refresh_device_facts(self) -> None:
        temperature = self.primary.info().get("temperature_c") if self.primary.available else None
        if isinstance(temperature, int | float):
            self.status.extra["temperature_c"] = round(float(temperature), 1)
            self.metrics.temperature.set(temperature)


def sensor_expire_s(settings: WorkerSettings) -> int:
    """How long Home Assistant keeps a silent sensor available: ten summaries' worth."""
    return max(60, int(settings.summary_interval_s * 10))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def build(settings: WorkerSettings) -> Worker:
    """The backends the settings ask for, and a worker around them (ConfigError if wrong)."""
    primary = backends.create(settings.infer_mode, settings)
    fallback = None
    if settings.infer_mode == "hailo" and settings.hailo_fallback != "none":
        fallback = backends.create(settings.hailo_fallback, settings)
    if settings.mqtt_username and settings.mqtt_username != settings.worker_id:
        log.warning("MQTT_USERNAME %r differs from WORKER_ID %r: a broker that binds client ids "
                    "to users (the shipped one does) will refuse this worker",
                    settings.mqtt_username, settings.worker_id)
    return Worker(settings, primary, fallback)
