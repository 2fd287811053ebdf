"""Intake: a window from the broker becomes a queued job, or an error answered at once.

Runs on the MQTT network thread for every window, so it does as little as it can: the size
check, the decode (finiteness is checked later, once per batch), the reply topic and the expiry.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import paho.mqtt.client as mqtt

from worker.batcher import BatchQueue
from worker.flow import FlowControl
from worker.logs import Throttled
from worker.mqtt_link import MqttLink
from worker.settings import WorkerSettings
from worker.wire import Window, WireError, decode_window

if TYPE_CHECKING:
    from worker.answer import Answerer

log = logging.getLogger("worker")


@dataclass(slots=True)
class Job:
    sensor_id: str
    window: Window
    received: float  # time.monotonic()
    expires: float  # time.monotonic() when its MQTT v5 Message Expiry runs out; inf: never
    mid: int
    qos: int
    generation: int  # the link's connection count on receipt: its ack is good only on that one
    reply_to: str | None
    correlation: bytes | None
    held: bool = False  # counted in FlowControl.unanswered until answered


EMPTY = Window(np.zeros((0, 0), np.float32))


class Intake:
    def __init__(self, settings: WorkerSettings, link: MqttLink, flow: FlowControl,
                 queue: BatchQueue[Job], answers: Answerer) -> None:
        self.settings, self.link, self.flow, self.queue, self.answers = (
            settings, link, flow, queue, answers)
        self.accepting = False  # windows arriving otherwise stay unacknowledged: redelivered
        self.arrived = 0  # since the owner last read it: counted into metrics once per tick
        self._length, self._channels = settings.window_length, settings.channels
        self._failures = Throttled(log, "unexpected failure on a window")

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not self.accepting:
            return
        received = time.monotonic()
        self.arrived += 1
        if msg.qos:
            self.flow.unacked += 1
        try:
            self._receive(msg, received)
        except Exception:  # nothing a sensor sends may take the network thread down
            self._failures.exception("from %s", msg.topic)
            self._answer_anyway(msg, received)

    def _job(self, msg: mqtt.MQTTMessage, received: float) -> Job:
        props = getattr(msg, "properties", None)
        reply_to = getattr(props, "ResponseTopic", None)
        if reply_to is not None and not reply_to.startswith(self.settings.response_topic_prefix):
            reply_to = None
        expiry = getattr(props, "MessageExpiryInterval", None)
        return Job(msg.topic.split("/", 2)[1], EMPTY, received,
                   received + expiry if expiry else math.inf, msg.mid, msg.qos,
                   self.link.generation, reply_to, getattr(props, "CorrelationData", None))

    def _receive(self, msg: mqtt.MQTTMessage, received: float) -> None:
        job = self._job(msg, received)
        payload = msg.payload
        if len(payload) > self.settings.max_payload_bytes:
            self.answers.error(job, "too_large",
                               f"The window is {len(payload)} bytes; the limit is "
                               f"{self.settings.max_payload_bytes} (MAX_PAYLOAD_BYTES).")
            return
        try:
            job.window = decode_window(payload, self._length, self._channels, check_finite=False)
        except WireError as exc:
            job.window = Window(EMPTY.x, exc.seq)
            self.answers.error(job, exc.code, exc.detail)
            return
        job.held = True
        self.flow.unanswered += 1
        self.queue.put(job)

    def _answer_anyway(self, msg: mqtt.MQTTMessage, received: float) -> None:
        """A window that broke the intake still gets an answer, or is let go: redelivered at
        every reconnect, it would poison every restart."""
        try:
            self.answers.error(self._job(msg, received), "decode_error",
                               "The worker could not read this window (its log says why).")
        except Exception:
            self._failures.exception("answering a window from %s", msg.topic)
            if msg.qos and self.link.ack(msg.mid, self.link.generation):
                self.flow.unacked -= 1
