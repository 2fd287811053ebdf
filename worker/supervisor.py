"""Device supervision: which backend answers now, and getting a lost device back.

When the device is lost, the fallback (HAILO_FALLBACK) answers, or, with none, every window is
answered `inference_failed`. Reopening the device runs on a thread of its own, one attempt at a
time, with backoff between attempts: a reopen that hangs (a wedged driver) holds up nothing but
itself. No second attempt starts while one has not returned, so a hung one costs one thread, and
the status says it hangs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.backends.base import Backend
from worker.metrics import WorkerMetrics

log = logging.getLogger("worker")

REOPEN_MIN_S = 1.0
REOPEN_MAX_S = 30.0
OnState = Callable[..., None]  # Worker.set_state(state, mode=, model=, detail=)


@dataclass
class _Attempt:
    started: float
    outcome: str | None = None  # why it failed, once it returned
    returned: bool = False
    reported_hung: bool = False


class Supervisor:
    """Owned by the network thread; only the reopen thread's outcome crosses over."""

    def __init__(self, primary: Backend, fallback: Backend | None, metrics: WorkerMetrics,
                 set_state: OnState, wake: Callable[[], None], hung_after_s: float) -> None:
        self.primary, self.fallback, self.metrics = primary, fallback, metrics
        self.active: Backend | None = primary
        self._set_state, self._wake, self._hung_after_s = set_state, wake, hung_after_s
        self._delay = REOPEN_MIN_S
        self._next = 0.0
        self._attempt: _Attempt | None = None
        self._reason = ""

    @property
    def primary_active(self) -> bool:
        return self.active is self.primary

    def down(self, reason: str) -> None:
        """The primary backend is lost: serve with the fallback (if any) and start recovering."""
        if self.active is not self.primary:
            return
        self.active = self.fallback
        self.metrics.device_up.set(0)
        self._delay = REOPEN_MIN_S
        self._next = time.monotonic() + self._delay
        self._reason = reason
        self._set_state("degraded", **self._degraded(""))

    def _degraded(self, more: str) -> dict[str, str]:
        serving = self.fallback or self.primary
        how = f"; {self.fallback.mode} answers meanwhile" if self.fallback else ""
        return {"mode": serving.mode, "model": serving.model_id,
                "detail": f"{self.primary.mode} unavailable ({self._reason}){more}{how}"}

    def poll(self, now: float) -> None:
        """Take in a finished attempt, or start the next one when it is due."""
        if self.active is self.primary:
            return
        attempt = self._attempt
        if attempt is None:
            if now >= self._next:
                self._start(now)
        elif attempt.returned:
            self._attempt = None
            self._returned(attempt)
        elif not attempt.reported_hung and now - attempt.started > self._hung_after_s:
            attempt.reported_hung = True
            log.warning("%s reopen has not returned in %.0f s; no other attempt until it does",
                        self.primary.mode, now - attempt.started)
            self._set_state("degraded", **self._degraded("; reopening it hangs"))

    def _start(self, now: float) -> None:
        attempt = self._attempt = _Attempt(now)

        def run() -> None:
            try:
                self.primary.reopen()
            except Exception as exc:
                attempt.outcome = str(exc) or type(exc).__name__
            attempt.returned = True
            self._wake()

        threading.Thread(target=run, name="reopen", daemon=True).start()

    def _returned(self, attempt: _Attempt) -> None:
        if attempt.outcome is None:
            self.active = self.primary
            self.metrics.device_up.set(1)
            log.info("%s is back", self.primary.mode)
            self._set_state("online", mode=self.primary.mode, model=self.primary.model_id)
            return
        self._delay = min(self._delay * 2, REOPEN_MAX_S)
        self._next = time.monotonic() + self._delay
        log.info("%s still unavailable (%s); next try in %.0f s", self.primary.mode,
                 attempt.outcome, self._delay)
        if attempt.reported_hung:
            self._set_state("degraded", **self._degraded(""))
