"""The device runner: one thread that runs batches on the accelerator, two deep.

The network thread submits a batch and goes back to reading. While the device works on one
batch the next is already waiting beside it, so the chip does not idle while the host
decodes, publishes and acknowledges (pipelining). A call that does not return within its
limit is abandoned (the watchdog): what was queued behind it moves to a fresh thread, and
the stuck thread is left to return whenever it does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("worker.device")


class Task(Protocol):
    limit_s: float  # how long it may take from its start before the watchdog gives up on it
    overlaps: bool  # may start while another task is still on the device

    def start(self) -> None:
        """Put the work on the device and return (a device without a queue does it all here)."""
        ...

    def finish(self) -> None:
        """Wait for the device and answer."""
        ...

    def abandoned(self, why: str) -> None:
        """The watchdog gave up on this task: answer for it."""
        ...


class DeviceRunner:
    def __init__(self, depth: int = 2) -> None:
        self.depth = depth  # tasks on the device at once
        self._cond = threading.Condition()
        self._pending: deque[Task] = deque()
        self._running: deque[tuple[Task, float]] = deque()  # (started, not finished; since)
        self._generation = 0
        self._closing = False
        self._spawn()

    def _spawn(self) -> None:
        threading.Thread(target=self._loop, args=(self._generation,), name="device",
                         daemon=True).start()

    def __len__(self) -> int:
        """Tasks submitted and not finished."""
        return len(self._pending) + len(self._running)

    @property
    def has_room(self) -> bool:
        # One more than the device holds: it goes on as soon as the oldest one comes off.
        return len(self) <= self.depth

    def submit(self, task: Task) -> None:
        with self._cond:
            self._pending.append(task)
            self._cond.notify()

    def overdue_s(self, now: float) -> float:
        """How far the oldest running task is past its limit (negative: time it has left)."""
        try:
            task, started = self._running[0]
        except IndexError:
            return -1.0
        return now - started - task.limit_s

    def abandon(self) -> list[Task]:
        """Give up on the running tasks; a fresh thread takes the ones queued behind them."""
        with self._cond:
            tasks = [task for task, _ in self._running]
            self._running.clear()
            self._generation += 1
            self._spawn()
            self._cond.notify_all()
        return tasks

    def close(self) -> None:
        """Run what is queued, then let the thread end."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def _loop(self, generation: int) -> None:
        on_device: deque[Task] = deque()
        while True:
            with self._cond:
                if not on_device:
                    self._cond.wait_for(lambda: bool(self._pending) or self._closing
                                        or generation != self._generation)
                if generation != self._generation:
                    return
                task = self._next(on_device)
                if task is None and not on_device:
                    return  # closing, and nothing left
                if task is not None:
                    self._running.append((task, time.monotonic()))
            if task is not None:
                _guarded(task.start)
                on_device.append(task)
                continue
            _guarded(on_device.popleft().finish)
            with self._cond:
                if generation != self._generation:
                    return  # the watchdog gave up on us meanwhile
                self._running.popleft()
                self._cond.notify_all()

    def _next(self, on_device: deque[Task]) -> Task | None:
        """The next task to start now, if the device can take it."""
        if not self._pending:
            return None
        if not on_device:
            return self._pending.popleft()
        if (len(on_device) < self.depth and self._pending[0].overlaps
                and on_device[-1].overlaps):
            return self._pending.popleft()
        return None


def _guarded(step: Callable[[], None]) -> None:
    try:
        step()
    except Exception:  # a task answers its own failures: this is a bug, and must not kill us
        log.exception("device task failed unexpectedly")
