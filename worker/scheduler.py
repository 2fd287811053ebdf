"""Scheduling: when each batch runs, where, and what becomes of its outcome.

Everything here runs on the MQTT network thread, between passes over the socket. A `stub` or
`cpu` batch (and the fallback's, while the device is down) runs right there: a hand-off to
another thread would cost more than it does. A `hailo` batch goes to the device runner
(worker/device.py), whose thread puts it on the chip and waits; the network thread answers it
when it is back, or the watchdog does when the device call hangs.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from worker.answer import Answerer
from worker.backends.base import Backend, Floats, InferenceError, Pending
from worker.batcher import BatchQueue
from worker.device import DeviceRunner
from worker.intake import Job
from worker.metrics import WorkerMetrics
from worker.supervisor import Supervisor
from worker.wire import NON_FINITE, finite_rows

log = logging.getLogger("worker")

IDLE_TICK_S = 0.5  # how often the network thread looks around when nothing happens
BUSY_TICK_S = 0.05  # ... and while every device slot is taken (answers wake it sooner)


class _Batch:
    """A batch of jobs: started (on the device, if there is one), resolved, then answered.

    Whoever claims the batch first answers it: the network thread once it is resolved, or the
    watchdog when the device call hangs (a stuck call that returns later finds the batch
    claimed, and nothing is published twice).
    """

    __slots__ = ("_claims", "backend", "jobs", "limit_s", "outcome", "scheduler", "seconds",
                 "started", "x")
    overlaps = True  # the Task protocol of worker/device.py

    def __init__(self, scheduler: Scheduler, jobs: list[Job], x: Floats, limit_s: float) -> None:
        self.scheduler, self.jobs, self.x, self.limit_s = scheduler, jobs, x, limit_s
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
        self.backend = backend = self.scheduler.supervisor.active
        self.started = time.monotonic()
        if backend is not None:
            self.outcome = _start(backend, self.x)

    def resolve(self) -> None:
        """Wait for the device's answer (or error) and keep it."""
        if self.outcome is not None:
            self.outcome = _resolved(self.outcome)
        self.seconds = time.monotonic() - self.started

    def finish(self) -> None:  # on the device thread
        self.resolve()
        self.scheduler.answerable.append(self)
        self.scheduler.wake()

    def abandoned(self, why: str) -> None:
        if self.claim():
            for job in self.jobs:
                self.scheduler.answers.error(job, "inference_failed", f"Inference failed: {why}")


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


class Scheduler:
    def __init__(self, queue: BatchQueue[Job], supervisor: Supervisor, answers: Answerer,
                 metrics: WorkerMetrics, runner: DeviceRunner | None, batch_limit_s: float,
                 wake: Callable[[], None]) -> None:
        self.queue, self.supervisor, self.answers, self.metrics = (
            queue, supervisor, answers, metrics)
        self.runner, self.batch_limit_s, self.wake = runner, batch_limit_s, wake
        self.answerable: deque[_Batch] = deque()  # device batches back, for the network thread

    @property
    def idle(self) -> bool:
        return not (self.queue or self.answerable or self.runner)

    def tick(self, now: float) -> float:
        """Start (or run) the batches that are due; return how long the thread may sleep."""
        runner = self.runner
        if runner is not None:
            while self.answerable:
                self.finish(self.answerable.popleft())
            if runner.overdue_s(now) > 0:
                self._watchdog(runner)
        self.supervisor.poll(now)
        queue = self.queue
        if runner is None or not self.supervisor.primary_active:
            # One batch, then back to the socket: flow control reads what fits meanwhile.
            n = queue.due(now)
            if n and (batch := self._take(n, now, 0.0)):
                batch.start()
                batch.resolve()
                self.finish(batch)
            return 0.0 if n else queue.wait_s(now, IDLE_TICK_S)
        while runner.has_room and (n := queue.due(now)):
            if batch := self._take(n, now, self.batch_limit_s):
                runner.submit(batch)
        if not runner.has_room:
            return min(BUSY_TICK_S, max(0.0, -runner.overdue_s(now)))
        return queue.wait_s(now, IDLE_TICK_S)

    def _take(self, n: int, now: float, limit_s: float) -> _Batch | None:
        """The next `n` queued windows as a batch, less those expired (answered `overloaded`)
        and those holding NaN or infinity (`non_finite`): one finiteness check for the whole
        batch costs less than one each."""
        jobs, expired = self.queue.take(n, now)
        for job in expired:
            self.answers.error(job, "overloaded",
                               f"The window expired after waiting {now - job.received:.3f} s in "
                               "the worker (its MQTT message expiry ran out); it was not run.")
        if not jobs:
            return None
        x = np.stack([job.window.x for job in jobs])
        finite = finite_rows(x)
        if not finite.all():
            for job in itertools.compress(jobs, ~finite):
                self.answers.error(job, "non_finite", NON_FINITE)
            jobs, x = list(itertools.compress(jobs, finite)), x[finite]
        return _Batch(self, jobs, x, limit_s) if jobs else None

    def _watchdog(self, runner: DeviceRunner) -> None:
        tasks = runner.abandon()
        if not tasks:  # the late task ended between overdue_s() and abandon()
            return
        primary = self.supervisor.primary
        why = f"the {primary.mode} backend did not return within {tasks[0].limit_s:.1f} s"
        log.warning("%s: giving up on it", why)
        for task in tasks:
            task.abandoned(why)
        self.supervisor.down(why)

    def finish(self, batch: _Batch) -> None:
        """Answer a resolved batch."""
        jobs, backend = batch.jobs, batch.backend
        if backend is None or batch.outcome is None:
            if batch.claim():
                for job in jobs:
                    self.answers.error(job, "inference_failed", "The device is down and no "
                                       "fallback is set: see the worker's status.")
            return
        try:
            latent, motifs = batch.outcome()
        except InferenceError as exc:
            self._failed(batch, backend, exc)
            return
        if not batch.claim():
            return  # the watchdog answered this batch while the call hung
        if not (np.isfinite(latent).all() and np.isfinite(motifs).all()):
            # A model that yields NaN is broken for these inputs: say so rather than publish it.
            for job in jobs:
                self.answers.error(job, "inference_failed", "The model produced NaN or infinity.")
            return
        self.metrics.inference_seconds.observe(batch.seconds)
        self.metrics.batch_size.observe(len(jobs))
        self.answers.results(jobs, backend.model_id, latent, motifs)

    def _failed(self, batch: _Batch, backend: Backend, exc: InferenceError) -> None:
        supervisor = self.supervisor
        if exc.device_lost and backend is supervisor.primary and not supervisor.primary_active \
                and supervisor.active is not None:
            # It was on the device when an earlier batch found the device lost: the fallback
            # answers it, as it answers everything after.
            batch.backend, batch.outcome = supervisor.active, _start(supervisor.active, batch.x)
            batch.resolve()
            self.finish(batch)
            return
        if not batch.claim():
            return
        log.warning("%s backend failed a batch of %d: %s", backend.mode, len(batch.jobs), exc)
        for job in batch.jobs:
            self.answers.error(job, "inference_failed", f"Inference failed: {exc}")
        if exc.device_lost and backend is supervisor.primary:
            supervisor.down(str(exc))

