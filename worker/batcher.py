"""The adaptive batcher: a bounded queue that says when a batch is due.

A batch is due when it is full (BATCH_MAX_SIZE) or when its *first* window has waited
BATCH_MAX_WAIT_MS since it was received, whichever comes first (MLServer's adaptive batcher,
without its drift: the deadline is fixed once, from the first window's receipt time).
When the queue is full, the oldest window is pushed out and returned to the caller, which
answers it `overloaded`: every window gets exactly one answer.

It never blocks and takes no lock: one thread (the MQTT network loop) owns it, asks it how
long it may sleep, and takes batches from it. Waking another thread for every window or
batch would cost more than the work itself (see bench/README.md).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    @property
    def received(self) -> float:
        """`time.monotonic()` when the window arrived."""
        ...


T = TypeVar("T", bound=Timed)


class BatchQueue(Generic[T]):
    def __init__(self, maxsize: int, batch_max_size: int, max_wait_s: float) -> None:
        self.maxsize = maxsize
        self.batch_max_size = batch_max_size
        self.max_wait_s = max_wait_s
        self._items: deque[T] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> T | None:
        """Queue `item`. Returns the oldest window if it had to make room, else None."""
        items = self._items
        dropped = items.popleft() if len(items) >= self.maxsize else None
        items.append(item)
        return dropped

    def close(self) -> None:
        """No more puts are expected: whatever is queued is due at once."""
        self._closed = True

    def due(self, now: float) -> int:
        """How many windows to take as the next batch now (0: none is due yet)."""
        n = len(self._items)
        if n >= self.batch_max_size:
            return self.batch_max_size
        if n and (self._closed or now >= self._items[0].received + self.max_wait_s):
            return n
        return 0

    def wait_s(self, now: float, idle_s: float) -> float:
        """How long until a batch is due, or `idle_s` when the queue is empty."""
        if not self._items:
            return idle_s
        if self.due(now):
            return 0.0
        return max(0.0, self._items[0].received + self.max_wait_s - now)

    def take(self, n: int) -> list[T]:
        items = self._items
        return [items.popleft() for _ in range(min(n, len(items)))]
