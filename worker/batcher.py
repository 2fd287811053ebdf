"""The adaptive batcher: the queue of windows waiting, and when the next batch is due.

Opportunistic by default (BATCH_MAX_WAIT_MS=0, as Triton's dynamic batcher): a batch is due as
soon as anything is queued, with up to BATCH_MAX_SIZE windows; under load batches fill by
themselves while the backend is busy. With a wait above 0 a partial batch is held until its
*first* window has waited that long (MLServer's adaptive batcher, without its drift: the
deadline is fixed once, from the first window's receipt time).

The queue itself is not bounded here: flow control (worker/flow.py) stops reading before it
holds QUEUE_MAX, so nothing is ever pushed out. A window whose MQTT v5 Message Expiry ran out
while it waited is handed back apart when a batch is taken, to be answered `overloaded`.

It never blocks and takes no lock: one thread (the MQTT network loop) owns it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    @property
    def received(self) -> float:
        """`time.monotonic()` when the window arrived."""
        ...

    @property
    def expires(self) -> float:
        """`time.monotonic()` when its Message Expiry runs out (math.inf: never)."""
        ...


T = TypeVar("T", bound=Timed)


class BatchQueue(Generic[T]):
    def __init__(self, batch_max_size: int, max_wait_s: float) -> None:
        self.batch_max_size = batch_max_size
        self.max_wait_s = max_wait_s
        self._items: deque[T] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> None:
        self._items.append(item)

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

    def take(self, n: int, now: float) -> tuple[list[T], list[T]]:
        """The next `n` windows: (those still in time, those expired by `now`)."""
        items = self._items
        batch = [items.popleft() for _ in range(min(n, len(items)))]
        if all(item.expires > now for item in batch):
            return batch, []
        return ([item for item in batch if item.expires > now],
                [item for item in batch if item.expires <= now])

    def discard(self, stale: Callable[[T], bool]) -> list[T]:
        """Remove (and return) the queued windows `stale` says no longer need an answer."""
        kept: deque[T] = deque()
        gone: list[T] = []
        for item in self._items:
            (gone if stale(item) else kept).append(item)
        self._items = kept
        return gone
