"""Per-sensor summaries on `infer/{sensor_id}/summary` (CONTRACT.md, "Sensor summary").

A dashboard that shows every sensor at a glance should not have to decode 76 floats of every
result. The worker keeps, per sensor, its latest result and what happened since its last summary,
and publishes that at most once per SUMMARY_INTERVAL_S: a sensor sending 10 windows a second costs
one small retained message a second, and a new subscriber sees every sensor's last state at once.

Only the network thread calls this (it answers every window), so nothing here takes a lock; the
cost per window is a dictionary lookup and a few assignments.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.status import iso

MAX_SENSORS = 10_000  # the broker's ACL bounds sensors by users; this bounds the table anyway


@dataclass(slots=True)
class _Sensor:
    since: float  # start of the interval the next summary covers (time.monotonic())
    seq: int | None = None
    scores: list[float] | None = None
    latency_ms: float | None = None
    windows: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    dirty: bool = False


class Summaries:
    """Args:
    worker_id: named in every summary (several workers may serve one sensor; the latest wins).
    interval_s: SUMMARY_INTERVAL_S; at most one summary per sensor per interval.
    """

    def __init__(self, worker_id: str, interval_s: float) -> None:
        self.worker_id = worker_id
        self.interval_s = interval_s
        self._sensors: OrderedDict[str, _Sensor] = OrderedDict()
        self._next_due = 0.0
        self._wake_at = float("inf")  # when the earliest summary with news falls due
        self.new: list[str] = []
        """Sensors seen for the first time since the owner last emptied this list."""

    def _sensor(self, sensor_id: str, now: float) -> _Sensor:
        sensor = self._sensors.get(sensor_id)
        if sensor is None:
            if len(self._sensors) >= MAX_SENSORS:
                self._sensors.popitem(last=False)  # the one idle longest
            sensor = self._sensors[sensor_id] = _Sensor(since=now - self.interval_s)
            self.new.append(sensor_id)
        else:
            self._sensors.move_to_end(sensor_id)
            if not sensor.dirty:
                # Back after a quiet spell: summarise at once, over one interval, rather than
                # average over the silence.
                sensor.since = max(sensor.since, now - self.interval_s)
        return sensor

    def result(self, sensor_id: str, seq: int | None, scores: list[float], latency_ms: float,
               now: float) -> None:
        sensor = self._sensor(sensor_id, now)
        sensor.seq, sensor.scores, sensor.latency_ms = seq, scores, latency_ms
        sensor.windows += 1
        self._news(sensor)

    def error(self, sensor_id: str, code: str, now: float) -> None:
        sensor = self._sensor(sensor_id, now)
        sensor.errors[code] = sensor.errors.get(code, 0) + 1
        sensor.windows += 1
        self._news(sensor)

    def _news(self, sensor: _Sensor) -> None:
        if not sensor.dirty:
            sensor.dirty = True
            self._wake_at = min(self._wake_at, sensor.since + self.interval_s)

    def wait_s(self, now: float) -> float:
        """How long until a summary with news falls due (inf: none has news), so that the
        network thread, idle between windows, wakes for it rather than at its next idle tick."""
        if self.interval_s <= 0 or self._wake_at == float("inf"):
            return float("inf")
        return max(0.0, self._wake_at - now, self._next_due - now)

    def due(self, now: float, *, everything: bool = False) -> Iterator[tuple[str, bytes]]:
        """(topic, payload) of every summary due now; `everything`: all with news (a stop)."""
        if not everything and (self.interval_s <= 0 or now < self._next_due):
            return
        self._next_due = now + min(self.interval_s, 0.25) if self.interval_s > 0 else 0.0
        wake_at = float("inf")
        for sensor_id, sensor in self._sensors.items():
            if sensor.dirty and (everything or now - sensor.since >= self.interval_s):
                yield f"infer/{sensor_id}/summary", json.dumps(
                    self._document(sensor_id, sensor, now)).encode()
                sensor.since, sensor.windows, sensor.errors, sensor.dirty = now, 0, {}, False
            elif sensor.dirty:
                wake_at = min(wake_at, sensor.since + self.interval_s)
        self._wake_at = wake_at

    def _document(self, sensor_id: str, sensor: _Sensor, now: float) -> dict[str, Any]:
        doc: dict[str, Any] = {"sensor_id": sensor_id, "worker_id": self.worker_id,
                               "updated_at": iso()}
        if sensor.seq is not None:
            doc["seq"] = sensor.seq
        if sensor.scores is not None:
            scores = sensor.scores
            doc["top_motif"] = max(range(len(scores)), key=scores.__getitem__)
            doc["motif_scores"] = scores
            doc["latency_ms"] = sensor.latency_ms
        elapsed = max(now - sensor.since, 1e-3)
        doc["windows_per_s"] = round(sensor.windows / elapsed, 3)
        doc["errors"] = dict(sensor.errors)
        return doc
