"""The adaptive batcher: a bounded queue that hands out batches.

A batch is released when it is full (BATCH_MAX_SIZE) or when its *first* window has waited
BATCH_MAX_WAIT_MS since it was received, whichever comes first (MLServer's adaptive batcher,
without its drift: the deadline is fixed once, from the first window's receipt time).
When the queue is full, the oldest window is pushed out and returned to the caller, which
answers it `overloaded`: every window gets exactly one answer.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    @property
    def received(self) -> float:
        """`time.monotonic()` when the window arrived."""
        ...


T = TypeVar("T", bound=Timed)


class BatchQueue(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        # How many queued windows the waiting consumer needs (0: nobody waits). A put wakes it
        # only then, not for every window: each wake-up is a context switch.
        self._want = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> T | None:
        """Queue `item`. Returns the oldest window if it had to make room, else None."""
        with self._cond:
            dropped = self._items.popleft() if len(self._items) >= self.maxsize else None
            self._items.append(item)
            if self._want and len(self._items) >= self._want:
                self._cond.notify()
        return dropped

    def close(self) -> None:
        """No more puts are expected: `get_batch` drains what is left without waiting."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get_batch(self, max_size: int, max_wait_s: float, idle_timeout_s: float = 0.5) -> list[T]:
        """Block for the next batch of 1..max_size windows.

        Returns [] when nothing arrived within `idle_timeout_s` (so the caller can do
        housekeeping) or when the queue is closed and empty.
        """
        with self._cond:
            if not self._items and not self._closed:
                self._want = 1
                self._cond.wait(idle_timeout_s)
            if not self._items:
                self._want = 0
                return []
            deadline = self._items[0].received + max_wait_s
            self._want = max_size
            while len(self._items) < max_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._want = 0
            n = min(max_size, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def drain(self) -> list[T]:
        """Take everything still queued (used when the worker gives up serving)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items
