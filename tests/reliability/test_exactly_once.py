"""Normal operation: every window gets exactly one answer, and the ledger catches it when not."""

from __future__ import annotations

from collections.abc import Callable

import paho.mqtt.client as mqtt
from support import Collector, WorkerProcess, wait_until

from reliability.accounting import Expect, Ledger, Sensors, stub_reference
from worker import wire


def test_ledger_reports_missing_duplicate_and_wrong_answers(
    collector: Collector, ledger: Ledger
) -> None:
    # No worker: this test plays the worker by hand, so each kind of failure is seen once.
    ledger.expect(("s", 0), Expect.result(0))   # answered correctly, twice
    ledger.expect(("s", 1), Expect.result(1))   # answered with someone else's latent
    ledger.expect(("s", 2), Expect.result(2))   # never answered
    ledger.expect(("s", 3), Expect.error("non_finite", 3))  # answered with the wrong code
    ref = stub_reference([("s", 0)])[("s", 0)]
    good = {"sensor_id": "s", "seq": 0, "latent": ref[0], "motif_scores": ref[1],
            "model": "stub-v2", "worker_id": "by-hand", "batch_size": 1, "latency_ms": 1.0}
    collector.publish("infer/s/result", wire.encode(good, "msgpack"))
    collector.publish("infer/s/result", wire.encode(good, "msgpack"))
    collector.publish("infer/s/result", wire.encode({**good, "seq": 1}, "msgpack"))
    collector.publish("infer/s/error", wire.encode(
        {"sensor_id": "s", "seq": 3, "error": "decode_error", "detail": "x"}, "msgpack"))
    collector.publish("infer/t/error", wire.encode(
        {"sensor_id": "t", "error": "decode_error", "detail": "x"}, "msgpack"))
    wait_until(lambda: ledger.unanswered() == 1 and len(ledger.unmatched) == 1, 5, "answers")
    report = ledger.report()
    assert report.missing == [("s", 2)]
    assert report.duplicates == {("s", 0): 2}
    assert len(report.wrong) == 2 and len(report.unmatched) == 1
    try:
        report.assert_clean()
    except AssertionError as exc:
        assert "never answered" in str(exc) and "more than once" in str(exc)
    else:
        raise AssertionError("assert_clean passed a report with problems")


def test_every_window_answered_exactly_once(
    start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors],
) -> None:
    start_worker(worker_id="w-once")
    v5 = sensors([f"v5-{i}" for i in range(4)])
    v311 = sensors([f"v311-{i}" for i in range(2)], protocol=mqtt.MQTTv311)
    v5.start(rate=200, duration=3)
    v311.start(rate=100, duration=3)
    v5.join()
    v311.join()
    ledger.wait_complete(20)
    report = ledger.report()
    print(report.summary())
    report.assert_clean()
    assert report.published >= 800 and report.outcomes == {"result": report.published}
    assert not report.duplicates
