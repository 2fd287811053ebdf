"""Thousands of malformed payloads, mixed with good windows, over MQTT to the real worker."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from hypothesis import HealthCheck, Phase, given, settings
from support import WorkerProcess, wait_until

from reliability.accounting import Ledger, Sensors
from reliability.fuzz_payloads import Case, malformed
from reliability.probes import MiB, Sampler

LIMIT = 65536  # MAX_PAYLOAD_BYTES, the default
BAD = 3000
GOOD_EVERY = 3  # one good window after every third bad one
BACKLOG = 300  # publish no further ahead of the answers than this
RSS_GROWTH_MIB = 25

def test_malformed_payloads_get_their_errors_and_good_windows_their_results(
    start_worker: Callable[..., WorkerProcess], ledger: Ledger,
    sensors: Callable[..., Sensors],
) -> None:
    w = start_worker(worker_id="w-fuzz")
    assert w.proc is not None
    pub = sensors(["good-bin", "good-lists", "good-json"])
    forms = itertools.cycle(["bin", "lists", "json"])
    count = itertools.count()
    sampler = Sampler(w.proc.pid, interval_s=0.25).start()
    started = time.monotonic()

    @settings(max_examples=BAD, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(malformed(LIMIT))
    def send(case: Case) -> None:
        payload, expect = case
        i = next(count)
        # A sensor id of its own: the answer is matched by topic, whatever the payload says.
        pub.publish_raw(f"fz{i}", payload, (f"fz{i}", None), expect)
        if i % GOOD_EVERY == 0:
            form = next(forms)
            pub.publish_window(f"good-{form}", form=form)
        if i % 100 == 0:
            wait_until(lambda: ledger.unanswered() < BACKLOG, 30, "the worker to catch up")

    send()
    ledger.wait_complete(60)
    elapsed = time.monotonic() - started
    sampler.stop()
    report = ledger.report()
    warm = sampler.rss_mib(0.1, 0.2)
    end = sampler.rss_mib(0.9, 1.0)
    print(f"\n{report.summary()}\n{sampler.describe()}; {report.published} payloads in "
          f"{elapsed:.1f} s")
    report.assert_clean()
    assert not report.duplicates
    assert report.published >= BAD + BAD // GOOD_EVERY
    assert report.outcomes["result"] == sum(pub.seq.values())
    assert {"decode_error", "invalid_shape", "invalid_dtype", "non_finite",
            "too_large"} <= set(report.outcomes)
    assert w.proc.poll() is None  # still up, the same process
    assert ledger.states("w-fuzz")[-1][1] == "online"
    assert max(end) - min(warm) < RSS_GROWTH_MIB, sampler.describe()
    assert max(s.rss for s in sampler.samples) < 300 * MiB
