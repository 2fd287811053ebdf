"""Silent network faults between a process and its broker (issue 15).

The process under test (a worker, the bridge or hailo-sim) runs in its own network namespace and
reaches the broker across a veth pair; nftables rules inside the namespace cut the link without a
FIN or RST, or drop a share of its packets (tests/netfault.py). Everything else (the broker, the
ledger, the sensors) stays outside on loopback. Keepalives here are KEEPALIVE_S = 4 s to keep
the runs short; the figures for the default 15 s are in tests/reliability/README.md.

These tests need root. Where the machine cannot make a namespace they fail, saying why.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from broker_util import Broker, start_broker
from netfault import NetFaultUnavailable, NetNamespace
from support import REPO, WorkerProcess

from reliability.accounting import Key, Ledger, Sensors
from worker.mqtt_link import RECONNECT_MAX_S

DEV_CONF = REPO / "mosquitto" / "dev.conf"
KEEPALIVE_S = int(os.environ.get("NETFAULT_KEEPALIVE_S", "4"))
# Mosquitto 2.0 closes a client that sent nothing for more than 1.5 x its keepalive (whole
# seconds), but its src/keepalive.c looks only when more than 5 s have passed since it last
# looked: the will comes 1.5 x keepalive + 1 to + 7 s after a cut.
BROKER_NOTICES_S = (int(1.5 * KEEPALIVE_S) + 1, int(1.5 * KEEPALIVE_S) + 7)
# paho sends a PINGREQ after one keepalive without traffic and gives up a keepalive later.
CLIENT_NOTICES_S = (KEEPALIVE_S - 1, 2 * KEEPALIVE_S)
CONNECT_TIMEOUT_S = 5.0  # paho's default: a SYN into a cut link blocks the attempt this long
SLACK_S = 2.5  # this machine is shared with other test runs


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    try:
        ns = NetNamespace.create()
    except NetFaultUnavailable as exc:
        pytest.fail(f"cannot build the network-fault layer on this machine: {exc}")
    yield ns
    ns.close()
    assert not ns.exists(), f"{ns.name} or {ns.host_if} left behind"


@pytest.fixture
def broker(netns: NetNamespace, tmp_path: Path) -> Iterator[Broker]:
    """mosquitto/dev.conf on loopback and on the host end of the veth pair (same port)."""
    b = start_broker(DEV_CONF.read_text(), tmp_path, also_on=[netns.host_ip])
    yield b
    b.stop()


@dataclass(frozen=True)
class Line:
    t: float
    """time.monotonic() of the record (from its wall-clock time stamp)."""
    logger: str
    msg: str


def log_lines(path: Path) -> list[Line]:
    """A process's LOG_FORMAT=json records, timed on this process's monotonic clock."""
    offset = time.time() - time.monotonic()
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(raw)
            wall = datetime.fromisoformat(doc["ts"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        out.append(Line(wall - offset, str(doc.get("logger")), str(doc.get("msg"))))
    return out


def lines_matching(path: Path, pattern: str, after: float = 0.0) -> list[Line]:
    rx = re.compile(pattern)
    return [line for line in log_lines(path) if line.t >= after and rx.search(line.msg)]


Starter = Callable[..., WorkerProcess]


@pytest.fixture
def worker_in_ns(netns: NetNamespace, broker: Broker, ledger: Ledger, tmp_path: Path
                 ) -> Iterator[Starter]:
    """Start `python -m worker` inside the namespace, connected across the veth."""
    started: list[WorkerProcess] = []

    def start(worker_id: str, wait_online: bool = True, **settings: Any) -> WorkerProcess:
        settings = {"mqtt_host": netns.host_ip, "mqtt_keepalive_s": KEEPALIVE_S,
                    "log_format": "json", **settings}
        w = WorkerProcess(broker.port, worker_id, tmp_path, prefix=netns.command([]),
                          **settings).start()
        assert w.proc is not None
        netns.adopt(w.proc)
        started.append(w)
        if wait_online:
            try:
                ledger.wait_state(worker_id, "online", after=time.monotonic() - 1, timeout=20)
            except AssertionError:
                raise AssertionError(f"{worker_id} never came online:\n{w.log()}") from None
        return w

    yield start
    for w in started:
        w.kill()


def states_between(ledger: Ledger, worker_id: str, start: float, end: float
                   ) -> list[tuple[float, str]]:
    return [(t, s) for t, s in ledger.states(worker_id) if start <= t <= end]


# -- 1. a silent cut of a lone worker ----------------------------------------------------------

CUT_S = max(30.0, 2.5 * KEEPALIVE_S)
LONE_RATE = 12  # windows/s; the whole cut plus the reconnect stays under QUEUE_MAX (1024)


def test_silent_cut_of_a_lone_worker(
    netns: NetNamespace, worker_in_ns: Starter, ledger: Ledger,
    sensors: Callable[..., Sensors],
) -> None:
    w = worker_in_ns("w-cut", status_interval_s=10)
    pub = sensors([f"n{i}" for i in range(4)]).start(rate=LONE_RATE)
    time.sleep(3.0)
    cut_at = time.monotonic()
    netns.cut()
    offline_at = ledger.wait_state("w-cut", "offline", after=cut_at,
                                   timeout=BROKER_NOTICES_S[1] + 10)
    time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))
    healed_at = time.monotonic()
    netns.heal()
    online_at = ledger.wait_state("w-cut", "online", after=healed_at, timeout=40)
    time.sleep(3.0)
    pub.stop()
    ledger.wait_complete(30)
    time.sleep(1.0)
    report = ledger.report()

    noticed = lines_matching(w.log_path, r"disconnected from the broker", after=cut_at)
    retries = lines_matching(w.log_path, r"cannot reach the broker", after=cut_at)
    resumed = lines_matching(w.log_path, r"connected to .* \(session present: True\)",
                             after=healed_at - 1)
    after_heal = [(t, s) for t, s in ledger.states("w-cut") if t >= healed_at]
    statuses_after = [d for t, d, _ in ledger.statuses
                      if t >= healed_at and d.get("worker_id") == "w-cut"]

    def answered_before_the_cut_and_again(key: Key) -> bool:
        # Its answer (or its PUBACK) was in the socket when the link went: the broker resent
        # the window on the resumed session and the worker answered it again. At least once.
        answers = ledger.answers[key]
        return (ledger.published_at[key] < cut_at and answers[0].t < cut_at + 1
                and all(a.t > healed_at for a in answers[1:]))

    retry_gaps = [round(b.t - a.t, 1) for a, b in itertools.pairwise(retries)]
    print(f"\n{report.summary()}\nbroker published the will {offline_at - cut_at:.2f} s after "
          f"the cut; the worker noticed after "
          f"{(noticed[0].t - cut_at) if noticed else float('nan'):.2f} s and tried "
          f"{len(retries)} times (gaps {retry_gaps} s); online again "
          f"{online_at - healed_at:.2f} s after the link came back; statuses after it: "
          f"{[(round(t - healed_at, 2), s) for t, s in after_heal]}; "
          f"duplicates: {sorted(report.duplicates)}")
    assert BROKER_NOTICES_S[0] - 1 < offline_at - cut_at < BROKER_NOTICES_S[1] + SLACK_S
    assert noticed, f"the worker never logged the lost link:\n{w.log()[-3000:]}"
    assert CLIENT_NOTICES_S[0] < noticed[0].t - cut_at < CLIENT_NOTICES_S[1] + SLACK_S
    assert len(retries) >= 2, "the worker stopped retrying during the cut"
    # Backoff: each try waits paho's 5 s connect timeout, then 1, 2, 4 ... 30 s (the cap).
    assert all(gap <= RECONNECT_MAX_S + CONNECT_TIMEOUT_S + SLACK_S for gap in retry_gaps)
    assert retry_gaps == sorted(retry_gaps), retry_gaps
    assert online_at - healed_at <= max(retry_gaps, default=0) + SLACK_S
    assert resumed, "the worker's session did not resume"
    report.assert_clean(allow_duplicate=answered_before_the_cut_and_again)
    assert report.outcomes == {"result": report.published}
    in_the_last_second = sum(1 for t in ledger.published_at.values() if cut_at - 1 < t < cut_at)
    assert report.extra_answers <= in_the_last_second
    assert [s for _, s in after_heal] and all(s == "online" for _, s in after_heal)
    assert len(statuses_after) <= 3, statuses_after
