"""Flow control: the worker holds at most QUEUE_MAX windows, and the rest wait in the broker.

Two halves, because MQTT has two kinds of windows:
- QoS 1: the worker's CONNECT asks for Receive Maximum = QUEUE_MAX, and a window is acknowledged
  only once its answer is, so the broker never hands over more than QUEUE_MAX at once; the rest
  stay queued in the worker's session (bounded by the broker's limits, kept by its persistence).
- QoS 0 (and anything a broker sends beyond its Receive Maximum): the network thread reads no
  more packets while QUEUE_MAX windows are unanswered, so TCP pushes back on the broker.
Answering never waits for reading, so a pause always ends by itself.

Only the network thread touches this: counters, no locks.
"""

from __future__ import annotations

RECEIVE_MAXIMUM_MAX = 65535  # MQTT v5's limit, and QUEUE_MAX's


class FlowControl:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.receive_maximum = min(limit, RECEIVE_MAXIMUM_MAX)
        self.unanswered = 0
        """Windows taken in and not yet answered (queued, batched or on the device)."""
        self.unacked = 0
        """QoS 1 windows of the current connection not yet acknowledged to the broker."""
        self.seconds = 0.0
        """Time spent in backpressure (QUEUE_MAX held, or the broker holding back)."""
        self._since: float | None = None

    def reading(self) -> bool:
        """Whether the network thread may read another packet now."""
        return self.unanswered < self.limit

    @property
    def backpressure(self) -> bool:
        return self.unanswered >= self.limit or self.unacked >= self.receive_maximum

    def reconnected(self) -> None:
        # The new connection starts its Receive Maximum afresh; windows of the old one are
        # never acknowledged on it.
        self.unacked = 0

    def account(self, now: float) -> float:
        """Count the time since `mark()` if it was spent in backpressure; the seconds added.
        (Reading is paused exactly from one tick's end to the next one's start.)"""
        added = now - self._since if self._since is not None else 0.0
        self.seconds += added
        self._since = None
        return added

    def mark(self, now: float) -> None:
        """End of a tick: from now, time counts if the worker is in backpressure."""
        self._since = now if self.backpressure else None
