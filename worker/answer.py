"""Answering: every window's result or error, published, and the window acknowledged after.

A QoS 1 window is acknowledged to the broker only once the broker has acknowledged every answer
to it (its topic, and its reply topic if it has one), and only on the connection it came on.
Each answer is encoded on its own: one that cannot be encoded is answered with an error, and
costs nothing to the others in its batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from paho.mqtt.properties import Properties

from worker.backends.base import Floats
from worker.flow import FlowControl
from worker.intake import EMPTY, Job
from worker.logs import Throttled
from worker.metrics import WorkerMetrics
from worker.mqtt_link import MqttLink, frozen, properties
from worker.settings import WorkerSettings
from worker.status import Status
from worker.summary import Summaries
from worker.wire import CONTENT_TYPES, ErrorCode, encode, error_doc

log = logging.getLogger("worker")


class _Done:
    """Runs once the broker has every answer to a window: acknowledges it, frees its place."""

    __slots__ = ("answers", "job", "tokens")

    def __init__(self, answers: Answerer, job: Job, count: int) -> None:
        self.answers, self.job = answers, job
        # Callbacks come from paho's thread and, for failed publishes, from the publisher: a
        # list pop is atomic, and exactly one caller pops the last token (True).
        self.tokens = [True] + [False] * (count - 1)

    def __call__(self) -> None:
        if self.tokens.pop():
            self.answers.acked(self.job)


class Answerer:
    def __init__(self, settings: WorkerSettings, link: MqttLink, flow: FlowControl,
                 metrics: WorkerMetrics, status: Status, summaries: Summaries) -> None:
        self.link, self.flow, self.metrics, self.status, self.summaries = (
            link, flow, metrics, status, summaries)
        self.worker_id = settings.worker_id
        self.encoding = settings.result_encoding
        self._content_type = CONTENT_TYPES[self.encoding]
        self._props = frozen(self._content_type)
        self._unencodable = Throttled(log, "cannot encode an answer")
        self._unpublishable = Throttled(log, "cannot publish an answer")

    def error(self, job: Job, code: ErrorCode, detail: str) -> None:
        self.metrics.errors.labels(code).inc()
        self.status.count(errors=1)
        self.summaries.error(job.sensor_id, code, time.monotonic())
        self._answer(job, "error", error_doc(job.sensor_id, code, detail, job.window.seq))

    def results(self, jobs: list[Job], model: str, latent: Floats, motifs: Floats) -> None:
        n = len(jobs)
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
            doc["worker_id"] = self.worker_id
            doc["batch_size"] = n
            now = time.monotonic()
            waited = now - job.received
            doc["latency_ms"] = latency_ms = round(waited * 1000, 3)
            observe(waited)
            summarise(job.sensor_id, window.seq, scores, latency_ms, now)
            self._answer(job, "result", doc)
        self.metrics.results.inc(n)

    def acked(self, job: Job) -> None:
        if job.qos and self.link.ack(job.mid, job.generation):
            self.flow.unacked -= 1

    def _answer(self, job: Job, kind: str, doc: dict[str, Any]) -> None:
        """Publish to infer/<sensor>/<kind> (and the reply topic); acknowledge the window after."""
        if job.held:
            job.held = False
            self.flow.unanswered -= 1
        try:
            payload = encode(doc, self.encoding)
        except (OverflowError, TypeError, ValueError) as exc:  # intake's checks should prevent it
            self._unencodable.warning("for %s: %s", job.sensor_id, exc)
            kind, payload = "error", encode(error_doc(
                job.sensor_id, "decode_error", "The answer to this window could not be encoded.",
                None), self.encoding)
        topic = f"infer/{job.sensor_id}/{kind}"
        done = _Done(self, job, 1 if job.reply_to is None else 2) if job.qos else None
        self._publish(topic, payload, self._props, done)
        if job.reply_to is not None:
            self._publish(job.reply_to, payload,
                          properties(self._content_type, correlation_data=job.correlation), done)
        job.window = EMPTY  # held until the broker acknowledges the answer: only its ids matter

    def _publish(self, topic: str, payload: bytes, props: Properties,
                 on_acked: Callable[[], None] | None) -> None:
        try:
            sent = self.link.publish(topic, payload, qos=1, props=props, on_acked=on_acked)
        except ValueError as exc:  # a reply topic with wildcards, say
            self._unpublishable.warning("on %r: %s", topic, exc)
            sent = False
        if not sent and on_acked is not None:
            on_acked()  # nothing will come back for it; don't hold the window forever
