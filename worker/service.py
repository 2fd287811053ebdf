"""The worker: broker -> decode -> queue -> batch -> backend -> publish.

Threads: the MQTT network thread reads and decodes each window, queues it, and between
passes over the socket takes the batches that are due: it runs a `stub` or `cpu` batch itself,
and hands a `hailo` batch to the device runner, whose thread puts it on the chip and waits for
it; the network thread answers every batch. It reads everything waiting before each batch, so
under overload the queue fills and the oldest windows are answered `overloaded` rather than
waiting in the broker. The main thread refreshes the status and waits for a stop signal.

A QoS 1 window is acknowledged to the broker only after the broker has acknowledged every
answer to it, so a crash loses nothing: unacknowledged windows are redelivered.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from worker import backends
from worker.backends.base import (
    PIPELINE_DEPTH,
    Backend,
    Floats,
    InferenceError,
    Pending,
)
from worker.batcher import BatchQueue
from worker.device import DeviceRunner
from worker.metrics import WorkerMetrics
from worker.mqtt_link import MqttLink, frozen, properties
from worker.settings import WorkerSettings
from worker.status import State, Status, will_payload
from worker.summary import Summaries
from worker.wire import (
    CONTENT_TYPES,
    NON_FINITE,
    ErrorCode,
    Window,
    WireError,
    decode_window,
    encode,
    error_doc,
    finite_rows,
)

log = logging.getLogger("worker")

REOPEN_MIN_S = 1.0
REOPEN_MAX_S = 30.0
STOP_DRAIN_S = 10.0
UNSUBSCRIBE_WAIT_S = 2.0
IDLE_TICK_S = 0.5  # how often the network thread looks around when nothing happens
BUSY_TICK_S = 0.05  # ... and while every device slot is taken (answers wake it sooner)


@dataclass(slots=True)
class Job:
    sensor_id: str
    window: Window
    received: float
    mid: int
    qos: int
    reply_to: str | None
    correlation: bytes | None


class _AckWhenAnswered:
    """Acknowledges a QoS 1 window once the broker has every answer to it."""

    __slots__ = ("link", "mid", "tokens")

    def __init__(self, link: MqttLink, mid: int, answers: int) -> None:
        self.link, self.mid = link, mid
        # Callbacks come from paho's thread and, for early acks, from the publisher: a list
        # pop is atomic, and exactly one caller pops the last token (True) and acks.
        self.tokens = [True] + [False] * (answers - 1)

    def __call__(self) -> None:
        if self.tokens.pop():
            self.link.ack(self.mid, 1)


class _Batch:
    """A batch of jobs: started (on the device, if there is one), resolved, then answered.

    On the device runner, `start` and `finish` (which waits for the device) run on the device
    thread, and the network thread answers the batch, so that all MQTT work stays on one
    thread. Whoever claims the batch first answers it: the network thread once it is
    resolved, or the watchdog when the device call hangs (a stuck call that returns later
    finds the batch claimed and nothing is published twice).
    """

    __slots__ = ("_claims", "backend", "jobs", "limit_s", "outcome", "seconds", "started",
                 "worker", "x")
    overlaps = True

    def __init__(self, worker: Worker, jobs: list[Job], x: Floats, limit_s: float) -> None:
        self.worker, self.jobs, self.x, self.limit_s = worker, jobs, x, limit_s
        self.backend: Backend | None = None
        self.outcome: Pending | None = None
        self.started = self.seconds = 0.0
        self._claims = [True]

    def claim(self) -> bool:
        try:
            return self._claims.pop()  # atomic: exactly one caller gets True
        except IndexError:
            return False

    def start(self) -> None:
        self.backend = backend = self.worker.active
        self.started = time.monotonic()
        if backend is not None:
            self.outcome = _start(backend, self.x)

    def resolve(self) -> None:
        """Wait for the device's answer (or error) and keep it."""
        if self.outcome is not None:
            self.outcome = _resolved(self.outcome)
        self.seconds = time.monotonic() - self.started

    def finish(self) -> None:
        self.resolve()
        self.worker._answerable.append(self)
        self.worker.link.wake()

    def abandoned(self, why: str) -> None:
        if self.claim():
            for job in self.jobs:
                self.worker._error(job, "inference_failed", f"Inference failed: {why}")


class _Reopen:
    """A device reopen attempt, run on the device thread once the device is empty."""

    __slots__ = ("limit_s", "worker")
    overlaps = False

    def __init__(self, worker: Worker, limit_s: float) -> None:
        self.worker, self.limit_s = worker, limit_s

    def start(self) -> None:
        self.worker._reopen()

    def finish(self) -> None:
        pass

    def abandoned(self, why: str) -> None:
        self.worker._reopen_failed(why)


def _resolved(pending: Pending) -> Pending:
    """`pending`, waited for: calling the result returns (or raises) at once."""
    try:
        done = pending()
    except Exception as exc:
        return _failing(exc)
    return lambda: done


def _failing(exc: Exception) -> Pending:
    error = exc if isinstance(exc, InferenceError) else InferenceError(
        f"{type(exc).__name__}: {exc}")

    def fail() -> tuple[Floats, Floats]:
        raise error

    return fail


def _start(backend: Backend, x: Floats) -> Pending:
    """Start `x` on `backend`; the result (or the InferenceError) comes from calling it."""
    try:
        submit = getattr(backend, "submit", None)  # a device beside the host (hailo)
        if submit is not None:
            pending: Pending = submit(x)
            return pending
        done = backend.infer(x)
        return lambda: done
    except Exception as exc:
        return _failing(exc)


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
        self.active: Backend | None = primary
        self.metrics = metrics or WorkerMetrics()
        self.queue: BatchQueue[Job] = BatchQueue(
            settings.queue_max, settings.batch_max_size, settings.batch_max_wait_ms / 1000
        )
        self.status = Status(
            worker_id=settings.worker_id,
            mode=primary.mode,
            model=primary.model_id,
            hef_sha256=_str_or_none(primary.info().get("hef_sha256")),
        )
        self.summaries = Summaries(settings.worker_id, settings.summary_interval_s)
        self.encoding = settings.result_encoding
        content_type = CONTENT_TYPES[self.encoding]
        self._content_type = content_type
        self._answer_props = frozen(content_type)
        self._status_props = frozen("application/json")
        self._accepting = threading.Event()
        self._serving = False  # batches wait until the warm-up is done
        self._arrived = 0  # windows received since the last tick (network thread only)
        self._answerable: deque[_Batch] = deque()  # device batches done, for the network thread
        self._drained = threading.Event()
        # Only a device can hang, and only a device runs beside the host: stub and cpu
        # batches run on the network thread, where a hand-off would cost more than they do.
        self._runner = DeviceRunner(PIPELINE_DEPTH) if primary.mode == "hailo" else None
        # The watchdog's limits: the backend bounds each call by DEVICE_TIMEOUT_MS itself.
        self._batch_limit_s = settings.device_timeout_ms / 1000 * 2 + 1
        self._reopen_limit_s = settings.device_timeout_ms / 1000 * 2 + 5
        self._reopen_at = 0.0
        self._reopen_delay = REOPEN_MIN_S
        self._reopening = False
        self._status_lock = threading.Lock()
        self.link = MqttLink(
            settings,
            client_id=settings.worker_id,
            subscriptions=[(settings.window_topic, 1)],
            on_message=self._on_message,
            clean_start=False,
            session_expiry_s=settings.session_expiry_s or 0,
            will=(settings.status_topic, will_payload(settings.worker_id)),
            manual_ack=True,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            on_tick=self._tick,
        )

    # -- life cycle --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Serve until `stop` is set, then drain, publish `stopped` and disconnect. Returns 0."""
        self.metrics.serve(self.settings.metrics_port)
        self._accepting.set()
        self.link.start()  # the status says `starting` until the warm-up is done
        self._warm_up()
        self._serving = True
        if not self.primary.available:
            self._device_down(self.primary, "the device could not be opened at start")
        else:
            self._set_state("online")
            self.metrics.device_up.set(1)
        # Start-up garbage is long-lived: freezing it keeps full collections short.
        gc.collect()
        gc.freeze()
        log.info(
            "serving %s as %s (mode %s, model %s)",
            self.settings.window_topic, self.settings.worker_id, self.status.mode,
            self.status.model,
        )
        while not stop.wait(self.settings.status_interval_s):
            self._refresh_device_facts()
            self.publish_status()
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        log.info("stopping: answering %d queued windows", len(self.queue))
        # In a group our session dies with us, and Mosquitto drops what it had handed us with
        # it: let the other members take new windows now, and keep accepting until the broker
        # confirms, since whatever it routed to us before the UNSUBSCRIBE comes ahead of UNSUBACK.
        if (self.settings.shared_group and self.link.connected.is_set()
                and not self.link.unsubscribe(self.settings.window_topic, UNSUBSCRIBE_WAIT_S)):
            log.warning("the broker did not confirm leaving the group in %.0f s",
                        UNSUBSCRIBE_WAIT_S)
        self._accepting.clear()  # later arrivals stay unacknowledged: the broker redelivers them
        self.queue.close()
        if not self._drained.wait(STOP_DRAIN_S):
            log.warning("%d windows were still queued when the drain time ran out",
                        len(self.queue))
        if not self.link.wait_all_acked(STOP_DRAIN_S / 2):
            log.warning("some answers were not acknowledged by the broker before stopping")
        self._set_state("stopped")
        self.link.wait_all_acked(2.0)
        self.link.stop()
        if self._runner is not None:
            self._runner.close()
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

    # -- status ------------------------------------------------------------------------------

    def publish_status(self) -> None:
        # Only once on_connect has subscribed: paho would otherwise send a status queued during
        # the handshake ahead of the SUBSCRIBE, and `online` would be seen before windows flow.
        # Every (re)connect publishes the status anyway.
        if not self.link.connected.is_set():
            return
        with self._status_lock:
            doc = self.status.document(queue_depth=len(self.queue))
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
        # A restarted broker may have lost the retained status: say it again on every connect.
        self.publish_status()

    def _on_disconnected(self, reason: str) -> None:
        self.metrics.connected.set(0)

    def _refresh_device_facts(self) -> None:
        temperature = self.primary.info().get("temperature_c") if self.primary.available else None
        if isinstance(temperature, int | float):
            self.status.extra["temperature_c"] = round(float(temperature), 1)
            self.metrics.temperature.set(temperature)

    # -- receiving (the network thread) ------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting.is_set():
            return
        received = time.monotonic()
        try:
            self._receive(msg, received)
        except Exception:  # nothing a sensor sends may take the network thread down
            log.exception("unexpected failure on a window from %s", msg.topic)

    def _receive(self, msg: mqtt.MQTTMessage, received: float) -> None:
        self._arrived += 1  # counted into the metrics and status once per tick: cheaper
        sensor_id = msg.topic.split("/", 2)[1]
        props = getattr(msg, "properties", None)
        reply_to = getattr(props, "ResponseTopic", None)
        if reply_to is not None and not reply_to.startswith(self.settings.response_topic_prefix):
            reply_to = None
        job = Job(sensor_id, _EMPTY, received, msg.mid, msg.qos, reply_to,
                  getattr(props, "CorrelationData", None))
        payload = msg.payload
        if len(payload) > self.settings.max_payload_bytes:
            self._error(job, "too_large",
                        f"The window is {len(payload)} bytes; the limit is "
                        f"{self.settings.max_payload_bytes} (MAX_PAYLOAD_BYTES).")
            return
        try:
            job.window = decode_window(payload, self.settings.window_length,
                                       self.settings.channels, check_finite=False)
        except WireError as exc:
            job.window = Window(_EMPTY.x, exc.seq)
            self._error(job, exc.code, exc.detail)
            return
        dropped = self.queue.put(job)
        if dropped is not None:
            self._error(dropped, "overloaded",
                        f"The worker's queue is full (QUEUE_MAX={self.settings.queue_max}); "
                        "this window waited longest and was dropped.")

    # -- batching (the network thread, between passes over the socket) -----------------------

    def _tick(self) -> float:
        """Start the batches that are due; return how long the network thread may sleep."""
        if self._arrived:
            self.metrics.windows.inc(self._arrived)
            self.status.count(windows=self._arrived)
            self._arrived = 0
        if not self._serving:
            return IDLE_TICK_S
        now = time.monotonic()
        queue, runner = self.queue, self._runner
        if runner is None:
            n = queue.due(now)
            # One batch, then back to the socket: whatever arrived meanwhile is read (and
            # shed if the queue is full) before the next batch, so reading keeps ahead.
            if n and (batch := self._take(n, 0.0)):
                batch.start()
                batch.resolve()
                self._finish(batch)
            wait = 0.0 if n else queue.wait_s(now, IDLE_TICK_S)
        else:
            wait = self._feed_device(runner, now)
        self.metrics.queue_depth.set(len(queue))
        for topic, payload in self.summaries.due(now):
            self.link.publish(topic, payload, qos=0, retain=True, props=self._status_props)
        if queue.closed and not (queue or self._answerable or runner):
            self._drained.set()
        return wait

    def _feed_device(self, runner: DeviceRunner, now: float) -> float:
        while self._answerable:
            self._finish(self._answerable.popleft())
        overdue = runner.overdue_s(now)
        if overdue > 0:
            self._watchdog(runner)
        if self.active is not self.primary and not self._reopening and now >= self._reopen_at:
            self._reopening = True
            runner.submit(_Reopen(self, self._reopen_limit_s))
        while runner.has_room and (n := self.queue.due(now)):
            if batch := self._take(n, self._batch_limit_s):
                runner.submit(batch)
        if not runner.has_room:
            return min(BUSY_TICK_S, max(0.0, -runner.overdue_s(now)))
        return self.queue.wait_s(now, IDLE_TICK_S)

    def _take(self, n: int, limit_s: float) -> _Batch | None:
        """The next `n` queued windows as a batch, less any holding NaN or infinity, which are
        answered `non_finite` here: one check for the whole batch costs less than one each."""
        jobs = self.queue.take(n)
        x = np.stack([job.window.x for job in jobs])
        finite = finite_rows(x)
        if not finite.all():
            for job in itertools.compress(jobs, ~finite):
                self._error(job, "non_finite", NON_FINITE)
            jobs, x = list(itertools.compress(jobs, finite)), x[finite]
        return _Batch(self, jobs, x, limit_s) if jobs else None

    def _watchdog(self, runner: DeviceRunner) -> None:
        tasks = runner.abandon()
        why = f"the {self.primary.mode} backend did not return within {tasks[0].limit_s:.1f} s"
        log.warning("%s: giving up on it", why)
        for task in tasks:
            task.abandoned(why)
        if any(isinstance(task, _Batch) for task in tasks) and self.active is self.primary:
            self._device_down(self.primary, why)

    # -- answering a batch (the network thread) -----------------------------------------------

    def _finish(self, batch: _Batch) -> None:
        jobs, backend = batch.jobs, batch.backend
        if backend is None or batch.outcome is None:
            if batch.claim():
                for job in jobs:
                    self._error(job, "inference_failed",
                                f"The device is down and no fallback is set: {self.status.detail}")
            return
        try:
            latent, motifs = batch.outcome()
        except InferenceError as exc:
            active = self.active
            if exc.device_lost and backend is self.primary and active not in (backend, None):
                # It was on the device when an earlier batch found the device lost: the
                # fallback answers it, as it answers everything after.
                assert active is not None
                batch.backend, batch.outcome = active, _start(active, batch.x)
                batch.resolve()
                self._finish(batch)
                return
            if not batch.claim():
                return
            log.warning("%s backend failed a batch of %d: %s", backend.mode, len(jobs), exc)
            for job in jobs:
                self._error(job, "inference_failed", f"Inference failed: {exc}")
            if exc.device_lost and backend is self.primary and self.active is backend:
                self._device_down(backend, str(exc))
            return
        if not batch.claim():
            return  # the watchdog answered this batch while the call hung
        if not (np.isfinite(latent).all() and np.isfinite(motifs).all()):
            # A model that yields NaN is broken for these inputs: say so rather than publish it.
            for job in jobs:
                self._error(job, "inference_failed", "The model produced NaN or infinity.")
            return
        self.metrics.inference_seconds.observe(batch.seconds)
        self.metrics.batch_size.observe(len(jobs))
        self._publish_results(jobs, backend, latent, motifs)

    def _publish_results(self, jobs: list[Job], backend: Backend, latent: Floats,
                         motifs: Floats) -> None:
        n = len(jobs)
        model, worker_id = backend.model_id, self.settings.worker_id
        observe = self.metrics.latency_seconds.observe
        summarise = self.summaries.result
        for job, lat, scores in zip(jobs, latent.tolist(), motifs.tolist(), strict=True):
            window = job.window
            doc: dict[str, Any] = {"sensor_id": job.sensor_id}
            if window.seq is not None:
                doc["seq"] = window.seq
            if window.ts is not None:
                doc["ts"] = window.ts
            doc["latent"] = lat
            doc["motif_scores"] = scores
            doc["model"] = model
            doc["worker_id"] = worker_id
            doc["batch_size"] = n
            now = time.monotonic()
            waited = now - job.received
            doc["latency_ms"] = latency_ms = round(waited * 1000, 3)
            observe(waited)
            summarise(job.sensor_id, window.seq, scores, latency_ms, now)
            self._answer(job, "result", doc)
        self.metrics.results.inc(n)

    # -- device loss and recovery ------------------------------------------------------------

    def _device_down(self, backend: Backend, reason: str) -> None:
        self.active = self.fallback
        self.metrics.device_up.set(0)
        self._reopen_delay = REOPEN_MIN_S
        self._reopen_at = time.monotonic() + self._reopen_delay
        serving = self.fallback or backend
        how = f"; {self.fallback.mode} answers meanwhile" if self.fallback else ""
        self._set_state("degraded", mode=serving.mode, model=serving.model_id,
                        detail=f"{backend.mode} unavailable ({reason}){how}")

    def _reopen(self) -> None:
        try:
            self.primary.reopen()
        except Exception as exc:
            self._reopen_failed(str(exc))
            return
        self.active = self.primary
        self._reopening = False
        self.metrics.device_up.set(1)
        log.info("%s is back", self.primary.mode)
        self._set_state("online", mode=self.primary.mode, model=self.primary.model_id)

    def _reopen_failed(self, why: str) -> None:
        self._reopen_delay = min(self._reopen_delay * 2, REOPEN_MAX_S)
        self._reopen_at = time.monotonic() + self._reopen_delay
        self._reopening = False
        log.info("%s still unavailable (%s); next try in %.0f s",
                 self.primary.mode, why, self._reopen_delay)

    # -- answering ---------------------------------------------------------------------------

    def _error(self, job: Job, code: ErrorCode, detail: str) -> None:
        self.metrics.errors.labels(code).inc()
        self.status.count(errors=1)
        self.summaries.error(job.sensor_id, code, time.monotonic())
        self._answer(job, "error", error_doc(job.sensor_id, code, detail, job.window.seq))

    def _answer(self, job: Job, kind: str, doc: dict[str, Any]) -> None:
        """Publish to infer/<sensor>/<kind> (and the reply topic); ack the window after."""
        payload = encode(doc, self.encoding)
        topic = f"infer/{job.sensor_id}/{kind}"
        if job.reply_to is None:
            self._publish(topic, payload, self._answer_props,
                          functools.partial(self.link.ack, job.mid, 1) if job.qos else None)
            return
        both = _AckWhenAnswered(self.link, job.mid, 2) if job.qos else None
        self._publish(topic, payload, self._answer_props, both)
        self._publish(job.reply_to, payload,
                      properties(self._content_type, correlation_data=job.correlation), both)

    def _publish(self, topic: str, payload: bytes, props: Properties,
                 on_acked: Callable[[], None] | None) -> None:
        try:
            sent = self.link.publish(topic, payload, qos=1, props=props, on_acked=on_acked)
        except ValueError as exc:  # a reply topic with wildcards, say
            log.warning("cannot answer on %r: %s", topic, exc)
            sent = False
        if not sent and on_acked is not None:
            on_acked()  # nothing will come back for it; don't hold the window forever


_EMPTY = Window(np.zeros((0, 0), np.float32))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def build(settings: WorkerSettings) -> Worker:
    """The backends the settings ask for, and a worker around them (ConfigError if wrong)."""
    primary = backends.create(settings.infer_mode, settings)
    fallback = None
    if settings.infer_mode == "hailo" and settings.hailo_fallback != "none":
        fallback = backends.create(settings.hailo_fallback, settings)
    return Worker(settings, primary, fallback)
