"""kill -9 the worker mid-stream while sensors keep publishing; restart it; nothing is lost."""

from __future__ import annotations

import time
from collections.abc import Callable

from support import WorkerProcess

from reliability.accounting import Key, Ledger, Sensors

RATE = 150  # windows/s from all sensors; 1.5 s down stays well under QUEUE_MAX's 1024


def test_kill_9_mid_stream_loses_nothing(
    start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors],
) -> None:
    w = start_worker(worker_id="w-crash")
    pub = sensors([f"c{i}" for i in range(4)]).start(rate=RATE)
    time.sleep(1.5)
    killed_at = time.monotonic()
    w.kill()
    time.sleep(1.5)  # the sensors keep publishing: the broker queues for the worker's session
    restarted_at = time.monotonic()
    start_worker(worker_id="w-crash", wait_state=None)
    online_at = ledger.wait_state("w-crash", "online", after=restarted_at)
    time.sleep(1.5)
    pub.stop()
    ledger.wait_complete(20)
    report = ledger.report()

    def in_flight_at_the_kill(key: Key) -> bool:
        # Answered by the killed process before it died, then again after the restart: the
        # broker redelivered it because the kill came before the window's PUBACK.
        answers = ledger.answers[key]
        return (len(answers) == 2 and ledger.published_at[key] < killed_at
                and answers[0].t < restarted_at and answers[1].t > restarted_at)

    states = [s for t, s in ledger.states("w-crash") if killed_at < t < online_at]
    first_after = min(a[0].t for a in ledger.snapshot().values() if a[0].t > restarted_at)
    print(f"\n{report.summary()}\nrestart to online {online_at - restarted_at:.2f} s, "
          f"kill to first answer after restart {first_after - killed_at:.2f} s, "
          f"states between the kill and online {states}")
    report.assert_clean(allow_duplicate=in_flight_at_the_kill)
    assert "offline" in states  # the will: a crash reads offline
    assert report.outcomes == {"result": report.published}
    in_the_last_second = sum(1 for t in ledger.published_at.values()
                             if killed_at - 1 < t < killed_at)
    assert report.extra_answers <= in_the_last_second
