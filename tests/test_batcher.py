"""The adaptive batcher: full batches go at once, partial ones at the first window's deadline."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from worker.batcher import BatchQueue


@dataclass
class Item:
    n: int
    received: float = field(default_factory=time.monotonic)


@pytest.mark.parametrize("max_size", [1, 2, 8, 256])
def test_full_batch_is_released_without_waiting(max_size: int) -> None:
    q: BatchQueue[Item] = BatchQueue(1000)
    for i in range(max_size):
        q.put(Item(i))
    started = time.monotonic()
    batch = q.get_batch(max_size, max_wait_s=5.0)
    assert [it.n for it in batch] == list(range(max_size))
    assert time.monotonic() - started < 1.0  # far below the 5 s deadline


def test_partial_batch_waits_from_the_first_windows_receipt() -> None:
    q: BatchQueue[Item] = BatchQueue(100)
    q.put(Item(0, received=time.monotonic() - 0.2))  # already waited past the deadline
    started = time.monotonic()
    batch = q.get_batch(8, max_wait_s=0.1)
    assert len(batch) == 1 and time.monotonic() - started < 0.05

    q.put(Item(1))
    started = time.monotonic()
    batch = q.get_batch(8, max_wait_s=0.1)
    waited = time.monotonic() - started
    assert len(batch) == 1 and 0.08 < waited < 1.0


def test_late_arrivals_join_the_batch_until_it_is_full() -> None:
    q: BatchQueue[Item] = BatchQueue(100)
    q.put(Item(0))

    def feed() -> None:
        for i in range(1, 4):
            time.sleep(0.01)
            q.put(Item(i))

    threading.Thread(target=feed).start()
    batch = q.get_batch(4, max_wait_s=2.0)
    assert [it.n for it in batch] == [0, 1, 2, 3]


@pytest.mark.parametrize("maxsize", [1, 3])
def test_full_queue_pushes_out_the_oldest(maxsize: int) -> None:
    q: BatchQueue[Item] = BatchQueue(maxsize)
    dropped = [q.put(Item(i)) for i in range(maxsize + 2)]
    assert [d.n if d else None for d in dropped] == [None] * maxsize + [0, 1]
    assert len(q) == maxsize


def test_closed_queue_drains_then_returns_empty() -> None:
    q: BatchQueue[Item] = BatchQueue(10)
    for i in range(3):
        q.put(Item(i))
    q.close()
    assert len(q.get_batch(2, 10.0)) == 2
    assert len(q.get_batch(2, 10.0)) == 1
    started = time.monotonic()
    assert q.get_batch(2, 10.0) == [] and time.monotonic() - started < 0.1


def test_idle_queue_returns_empty_after_the_idle_timeout() -> None:
    q: BatchQueue[Item] = BatchQueue(10)
    assert q.get_batch(8, 0.005, idle_timeout_s=0.05) == []
