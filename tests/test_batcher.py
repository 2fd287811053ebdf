"""The adaptive batcher: opportunistic by default, full batches at once, partial ones at the
first deadline, expired windows handed back apart."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from worker.batcher import BatchQueue

T0 = 1000.0  # a fixed clock: the queue never reads the time itself


@dataclass
class Item:
    n: int
    received: float = T0
    expires: float = math.inf


@pytest.mark.parametrize("max_size", [1, 2, 8, 256])
def test_full_batch_is_due_without_waiting(max_size: int) -> None:
    q: BatchQueue[Item] = BatchQueue(max_size, max_wait_s=5.0)
    for i in range(max_size - 1):
        q.put(Item(i))
    assert q.due(T0) == 0 or max_size == 1
    q.put(Item(max_size - 1))
    assert q.due(T0) == max_size and q.wait_s(T0, 1.0) == 0.0
    assert [it.n for it in q.take(max_size, T0)[0]] == list(range(max_size))
    assert not q


def test_partial_batch_is_due_at_the_first_windows_deadline() -> None:
    q: BatchQueue[Item] = BatchQueue(8, max_wait_s=0.1)
    q.put(Item(0, received=T0))
    q.put(Item(1, received=T0 + 0.05))  # a later arrival does not move the deadline
    assert q.due(T0 + 0.06) == 0
    assert q.wait_s(T0 + 0.06, 1.0) == pytest.approx(0.04)
    assert q.due(T0 + 0.1) == 2
    assert [it.n for it in q.take(2, T0)[0]] == [0, 1]


def test_a_batch_takes_at_most_the_batch_size_and_the_rest_follows() -> None:
    q: BatchQueue[Item] = BatchQueue(4, max_wait_s=0.1)
    for i in range(6):
        q.put(Item(i))
    assert q.due(T0) == 4 and [it.n for it in q.take(4, T0)[0]] == [0, 1, 2, 3]
    assert q.due(T0) == 0 and q.due(T0 + 0.1) == 2


def test_with_no_wait_anything_queued_is_due_at_once() -> None:
    q: BatchQueue[Item] = BatchQueue(8, max_wait_s=0.0)
    q.put(Item(0))
    assert q.due(T0) == 1 and q.wait_s(T0, 1.0) == 0.0
    for i in range(1, 20):
        q.put(Item(i))
    assert q.due(T0) == 8  # the queue is never bounded here: flow control bounds it
    assert len(q) == 20


def test_expired_windows_come_back_apart_in_order() -> None:
    q: BatchQueue[Item] = BatchQueue(8, max_wait_s=0.0)
    for i, expires in enumerate([T0 + 5, T0 - 1, T0 + 1, T0]):
        q.put(Item(i, expires=expires))
    live, expired = q.take(8, T0)
    assert [it.n for it in live] == [0, 2] and [it.n for it in expired] == [1, 3]


def test_discard_removes_only_what_is_stale() -> None:
    q: BatchQueue[Item] = BatchQueue(8, max_wait_s=0.0)
    for i in range(6):
        q.put(Item(i))
    gone = q.discard(lambda it: it.n % 2 == 1)
    assert [it.n for it in gone] == [1, 3, 5]
    assert [it.n for it in q.take(8, T0)[0]] == [0, 2, 4]


def test_closed_queue_makes_everything_due_at_once() -> None:
    q: BatchQueue[Item] = BatchQueue(2, max_wait_s=10.0)
    q.put(Item(0))
    assert q.due(T0) == 0
    q.close()
    assert q.closed and q.due(T0) == 1 and q.wait_s(T0, 1.0) == 0.0


def test_empty_queue_sleeps_the_idle_time() -> None:
    q: BatchQueue[Item] = BatchQueue(8, 0.005)
    assert q.wait_s(T0, 0.5) == 0.5 and q.due(T0) == 0 and q.take(8, T0) == ([], [])
