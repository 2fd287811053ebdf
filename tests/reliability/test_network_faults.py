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
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker_util import Broker, free_port, start_broker
from netfault import NetFaultUnavailable, NetNamespace
from support import REPO, BridgeProcess, Collector, SimProcess, WorkerProcess, wait_until

from reliability.accounting import Key, Ledger, Sensors, cpu_reference
from reliability.probes import SEED_BODY, metric
from worker.mqtt_link import RECONNECT_MAX_S

pytestmark = pytest.mark.netfault
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

    def start(worker_id: str, **settings: Any) -> WorkerProcess:
        settings = {"mqtt_host": netns.host_ip, "mqtt_keepalive_s": KEEPALIVE_S,
                    "log_format": "json", **settings}
        w = WorkerProcess(broker.port, worker_id, tmp_path, prefix=netns.command([]),
                          **settings).start()
        assert w.proc is not None
        netns.adopt(w.proc)
        started.append(w)
        try:
            ledger.wait_state(worker_id, "online", after=time.monotonic() - 1, timeout=20)
        except AssertionError:
            raise AssertionError(f"{worker_id} never came online:\n{w.log()}") from None
        return w

    yield start
    for w in started:
        w.kill()


# -- 1. a silent cut of a lone worker ----------------------------------------------------------

# 30 s, or long enough for the worker to notice and then fail at least twice to reconnect.
CUT_S = max(30.0, 2 * KEEPALIVE_S + 15)
LONE_STATUS_S = 10  # the default STATUS_INTERVAL_S
LONE_RATE = 100  # windows/s: the cut leaves a backlog of thousands, past QUEUE_MAX (1024)
BURST_S = 0.3  # what paho sends on a reconnect arrives within this (ms apart, seen)


def test_silent_cut_of_a_lone_worker(
    netns: NetNamespace, worker_in_ns: Starter, ledger: Ledger,
    sensors: Callable[..., Sensors],
) -> None:
    _lone_cut(netns, worker_in_ns, ledger, sensors, CUT_S, LONE_RATE)


LONG_CUT_S = float(os.environ.get("NETFAULT_LONG_CUT_S", "120"))
LONG_RATE = 20  # windows/s


@pytest.mark.soak
def test_long_silent_cut_caps_the_backoff_and_sends_one_status(
    netns: NetNamespace, worker_in_ns: Starter, ledger: Ledger,
    sensors: Callable[..., Sensors],
) -> None:
    # Long enough for the backoff to reach its cap: 1 + 2 + 4 + 8 + 16 s, each try after a
    # 5 s connect timeout, then a try every 30 + 5 s. (A soak test: not part of `make test`.)
    gaps = _lone_cut(netns, worker_in_ns, ledger, sensors, LONG_CUT_S, LONG_RATE)
    assert max(gaps) >= RECONNECT_MAX_S, gaps
    ramp = 6  # tries before the cap is reached
    assert len(gaps) + 1 <= ramp + LONG_CUT_S / RECONNECT_MAX_S, gaps


def _lone_cut(netns: NetNamespace, worker_in_ns: Starter, ledger: Ledger,
              sensors: Callable[..., Sensors], cut_s: float, rate: float) -> list[float]:
    """Cut a lone worker for `cut_s` under `rate` windows/s; check it all; the retry gaps."""
    w = worker_in_ns("w-cut", status_interval_s=LONE_STATUS_S)
    pub = sensors([f"n{i}" for i in range(4)]).start(rate=rate)
    time.sleep(3.0)
    netns.cut()
    cut_at = time.monotonic()  # the rules are in place from here
    offline_at = ledger.wait_state("w-cut", "offline", after=cut_at,
                                   timeout=BROKER_NOTICES_S[1] + 10)
    time.sleep(max(0.0, cut_at + cut_s - time.monotonic()))
    healed_at = time.monotonic()
    netns.heal()
    online_at = ledger.wait_state("w-cut", "online", after=healed_at,
                                  timeout=RECONNECT_MAX_S + CONNECT_TIMEOUT_S + 10)
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
    # The statuses delivered on the reconnect: the one it publishes on connecting, and any it
    # wrote into the dead link before it noticed (QoS 1: paho resends them). Not its history.
    offset = time.time() - time.monotonic()
    # They come in one burst; a periodic refresh may follow within the second, on its own.
    on_reconnect = [(t, d) for t, d, _ in ledger.statuses
                    if d.get("worker_id") == "w-cut" and online_at <= t < online_at + BURST_S]
    written_after_noticing = [
        d for _, d in on_reconnect if noticed and
        datetime.fromisoformat(d["updated_at"].replace("Z", "+00:00")).timestamp()
        > noticed[0].t + offset]

    def answered_before_the_cut_and_again(key: Key) -> bool:
        # The worker had it at the cut, with its answer (or the window's PUBACK) still in the
        # socket: paho resent the answer and the broker the window on the resumed session, and
        # the worker answered that again. At least once, as QoS 1 promises.
        return ledger.published_at[key] < cut_at

    retry_gaps = [round(b.t - a.t, 1) for a, b in itertools.pairwise(retries)]
    print(f"\n{report.summary()}\nbroker published the will {offline_at - cut_at:.2f} s after "
          f"the cut; the worker noticed after "
          f"{(noticed[0].t - cut_at) if noticed else float('nan'):.2f} s and tried "
          f"{len(retries)} times (gaps {retry_gaps} s); online again "
          f"{online_at - healed_at:.2f} s after the link came back; statuses after it: "
          f"{[(round(t - healed_at, 2), s) for t, s in after_heal]} ({len(on_reconnect)} on "
          f"the reconnect, {len(written_after_noticing)} of them written after it noticed); "
          f"duplicates: {sorted(report.duplicates)}")
    assert BROKER_NOTICES_S[0] - 1 < offline_at - cut_at < BROKER_NOTICES_S[1] + SLACK_S
    assert noticed, f"the worker never logged the lost link:\n{w.log()[-3000:]}"
    assert CLIENT_NOTICES_S[0] < noticed[0].t - cut_at < CLIENT_NOTICES_S[1] + SLACK_S
    assert len(retries) >= 2, "the worker stopped retrying during the cut"
    # Backoff: each try waits paho's 5 s connect timeout, then 1, 2, 4 ... 30 s (the cap).
    assert all(gap <= RECONNECT_MAX_S + CONNECT_TIMEOUT_S + SLACK_S for gap in retry_gaps)
    assert all(b >= a - 1 for a, b in itertools.pairwise(retry_gaps)), retry_gaps
    assert online_at - healed_at <= max(retry_gaps, default=0) + SLACK_S
    assert resumed, "the worker's session did not resume"
    report.assert_clean(allow_duplicate=answered_before_the_cut_and_again)
    assert report.outcomes == {"result": report.published}
    in_the_last_second = sum(1 for t in ledger.published_at.values() if cut_at - 1 < t < cut_at)
    assert report.extra_answers <= in_the_last_second
    assert [s for _, s in after_heal] and all(s == "online" for _, s in after_heal)
    assert len(written_after_noticing) == 1, on_reconnect  # one new status, not a history
    stale_at_most = (CLIENT_NOTICES_S[1] + SLACK_S) // LONE_STATUS_S + 1
    assert len(on_reconnect) - 1 <= stale_at_most, on_reconnect
    return retry_gaps


# -- 2. a cut in the middle of answering -------------------------------------------------------

SLOW_DEVICE_MS = 50  # the double's chip time per job of up to BATCH_SLOW: about 80 windows/s
BATCH_SLOW = 4
BURST_RATE = 150  # a backlog builds in the worker: it is answering when the link goes
MID_QUEUE_MAX = 64  # ... and it is full: flow control holds the rest in the broker


def test_cut_while_answering_loses_nothing(
    netns: NetNamespace, worker_in_ns: Starter, ledger: Ledger,
    sensors: Callable[..., Sensors], hef: Path,
) -> None:
    ledger.reference, ledger.tolerance = cpu_reference, 1e-5
    metrics_port = free_port()
    # /metrics on the namespace's loopback, which a cut of the veth leaves alone: read from
    # inside the namespace with curl.
    worker_in_ns("w-mid", infer_mode="hailo", hef_path=hef,
                 hailo_double_latency_ms=SLOW_DEVICE_MS, batch_max_size=BATCH_SLOW,
                 queue_max=MID_QUEUE_MAX, metrics_port=metrics_port)

    def scrape(name: str) -> float | None:
        out = subprocess.run(
            netns.command(["curl", "-sf", f"http://127.0.0.1:{metrics_port}/metrics"]),
            capture_output=True, text=True, timeout=10, check=True).stdout
        return metric(out, name)

    pub = sensors([f"m{i}" for i in range(4)]).start(rate=BURST_RATE, duration=2.5)
    time.sleep(2.0)
    depth_before = scrape("hailo_worker_queue_depth")
    answered_before = scrape("hailo_worker_results_published_total")
    netns.cut()
    cut_at = time.monotonic()  # the rules are in place from here
    pub.join(10)
    time.sleep(1.0)
    answered_into_the_cut = scrape("hailo_worker_results_published_total")
    seen_before_cut = sum(1 for a in ledger.snapshot().values() if a[0].t < cut_at)
    time.sleep(max(0.0, cut_at + 2 * KEEPALIVE_S + SLACK_S - time.monotonic()))
    healed_at = time.monotonic()
    netns.heal()
    ledger.wait_state("w-mid", "online", after=healed_at, timeout=40)
    ledger.wait_complete(40)
    time.sleep(1.0)
    report = ledger.report()

    def answered_before_and_after(key: Key) -> bool:
        answers = ledger.answers[key]
        return ledger.published_at[key] < cut_at and answers[-1].t > healed_at

    print(f"\n{report.summary()}\nat the cut: queue depth {depth_before}, "
          f"{answered_before:.0f} results published, {seen_before_cut} answers seen; 1 s into "
          f"the cut {answered_into_the_cut:.0f} published (into the dead link); "
          f"{report.extra_answers} answered twice")
    assert depth_before and 0 < depth_before <= MID_QUEUE_MAX, depth_before
    assert answered_before is not None and answered_into_the_cut is not None
    assert answered_into_the_cut > answered_before, "the worker answered nothing into the cut"
    # Every window the broker took (the sensors are outside: all of them) is answered.
    report.assert_clean(allow_duplicate=answered_before_and_after)
    assert report.outcomes == {"result": report.published}


# -- 3. a lossy link -----------------------------------------------------------------------------

LOSSY_RATE = 200
PHASE_S = 6.0
LOSSES = (0, 5, 20)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def test_lossy_link_answers_every_window(
    netns: NetNamespace, worker_in_ns: Starter, ledger: Ledger,
    sensors: Callable[..., Sensors],
) -> None:
    w = worker_in_ns("w-lossy")
    pub = sensors([f"l{i}" for i in range(4)])
    phases: list[tuple[int, float, float]] = []
    for loss in LOSSES:
        if loss:
            netns.lose(loss)
        else:
            netns.heal()
        started = time.monotonic()
        pub.start(rate=LOSSY_RATE, duration=PHASE_S)
        pub.join(PHASE_S + 10)
        phases.append((loss, started, time.monotonic()))
        pub.wait_delivered(20)
        # Let this phase's answers in before the next loss level, so each is timed under its own.
        wait_until(lambda: ledger.unanswered() == 0, 60, f"every window answered at {loss}% loss")
    netns.heal()
    ledger.wait_complete(30)
    report = ledger.report()
    first = {k: a[0].t for k, a in ledger.snapshot().items()}
    lines = []
    for loss, start, end in phases:
        keys = [k for k, t in ledger.published_at.items() if start <= t < end]
        e2e = [(first[k] - ledger.published_at[k]) * 1000 for k in keys if k in first]
        lines.append(f"{loss}% loss: {len(keys)} windows, end to end p50 {pct(e2e, 0.5):.1f} ms "
                     f"p99 {pct(e2e, 0.99):.1f} ms max {pct(e2e, 1.0):.1f} ms")
    reconnects = lines_matching(w.log_path, r"disconnected from the broker")
    print(f"\n{report.summary()}\n" + "\n".join(lines)
          + f"\nthe worker lost its connection {len(reconnects)} times")
    # QoS 1 is at least once: if the loss ever cost the connection, windows in flight then
    # may be answered twice. Nothing may be missing or wrong.
    report.assert_clean(allow_duplicate=lambda key: bool(reconnects))
    assert report.outcomes == {"result": report.published}
    assert report.published >= len(LOSSES) * LOSSY_RATE * PHASE_S * 0.9


# -- 4. a cut member of a shared group ---------------------------------------------------------

GROUP_RATE = 100
GROUP_CUT_S = BROKER_NOTICES_S[1] + SLACK_S + 2


def _group_cut(
    netns: NetNamespace, worker_in_ns: Starter, start_worker: Callable[..., WorkerProcess],
    ledger: Ledger, sensors: Callable[..., Sensors], tag: str, **settings: Any,
) -> tuple[float, float, float, float]:
    """Two members, one in the namespace; cut it for GROUP_CUT_S while sensors publish.

    Returns when it was cut, when the broker published its will, when the link came back and
    when the cut member said `online` again.
    """
    start_worker(worker_id=f"w-{tag}-live", shared_group="g", **settings)
    worker_in_ns(f"w-{tag}-cut", shared_group="g", **settings)
    pub = sensors([f"{tag}{i}" for i in range(4)]).start(rate=GROUP_RATE)
    time.sleep(2.0)
    netns.cut()
    cut_at = time.monotonic()  # the rules are in place from here
    offline_at = ledger.wait_state(f"w-{tag}-cut", "offline", after=cut_at,
                                   timeout=BROKER_NOTICES_S[1] + 10)
    time.sleep(max(0.0, cut_at + GROUP_CUT_S - time.monotonic()))
    healed_at = time.monotonic()
    netns.heal()
    online_at = ledger.wait_state(f"w-{tag}-cut", "online", after=healed_at, timeout=40)
    time.sleep(2.0)
    pub.stop()
    return cut_at, offline_at, healed_at, online_at


def test_cut_group_member_without_a_session_loses_its_share_until_the_broker_notices(
    netns: NetNamespace, worker_in_ns: Starter, start_worker: Callable[..., WorkerProcess],
    ledger: Ledger, sensors: Callable[..., Sensors],
) -> None:
    cut_at, offline_at, healed_at, online_at = _group_cut(
        netns, worker_in_ns, start_worker, ledger, sensors, "g0")  # SESSION_EXPIRY_S 0
    time.sleep(3.0)  # whatever can still be answered
    report = ledger.report()
    lost = [ledger.published_at[k] - cut_at for k in report.missing]
    during = [k for k, t in ledger.published_at.items() if cut_at <= t < offline_at]
    after = [k for k, t in ledger.published_at.items() if t > offline_at + 0.5]
    first = {k: a[0] for k, a in ledger.snapshot().items()}
    print(f"\n{report.summary()}\nwill after {offline_at - cut_at:.2f} s; lost "
          f"{len(report.missing)} of the {len(during)} windows published between the cut and "
          f"the will, sent {min(lost, default=0):.2f} to {max(lost, default=0):.2f} s after the "
          f"cut; the cut member online again {online_at - healed_at:.2f} s after the link came "
          f"back")
    assert not report.wrong and not report.unmatched and not report.duplicates
    # Mosquitto hands the cut member its share until it drops the connection; with no
    # session, that share goes with it. Only windows of that interval may be missing.
    assert all(-0.5 <= t <= offline_at - cut_at + 0.5 for t in lost), lost
    assert report.missing, "expected Mosquitto 2.0.11 to lose the cut member's share"
    # Once the broker has noticed, the live member takes everything at once.
    assert all(k in first for k in after)
    assert all(first[k].t - ledger.published_at[k] < 1.0 for k in after
               if ledger.published_at[k] < healed_at)


def test_cut_group_member_with_a_session_loses_nothing_when_it_comes_back(
    netns: NetNamespace, worker_in_ns: Starter, start_worker: Callable[..., WorkerProcess],
    ledger: Ledger, sensors: Callable[..., Sensors],
) -> None:
    cut_at, offline_at, healed_at, online_at = _group_cut(
        netns, worker_in_ns, start_worker, ledger, sensors, "g1", session_expiry_s=60)
    ledger.wait_complete(40)
    report = ledger.report()
    first = {k: a[0] for k, a in ledger.snapshot().items()}
    waited = [k for k, t in ledger.published_at.items() if cut_at <= t < healed_at
              and first[k].doc["worker_id"] == "w-g1-cut"]
    after_will = [k for k in waited if ledger.published_at[k] > offline_at + 0.5]

    def answered_before_and_after(key: Key) -> bool:
        answers = ledger.answers[key]
        return ledger.published_at[key] < cut_at and answers[-1].t > healed_at

    print(f"\n{report.summary()}\nwill after {offline_at - cut_at:.2f} s; {len(waited)} windows "
          f"published during the cut waited for the cut member ({len(after_will)} of them "
          f"after its will), answered once it was back "
          f"({online_at - healed_at:.2f} s after the link)")
    report.assert_clean(allow_duplicate=answered_before_and_after)
    assert report.outcomes == {"result": report.published}
    assert waited, "the cut member's share did not wait for it"


# -- 5. a cut bridge -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    t: float
    route: str
    code: int
    seconds: float


class BridgeProbe:
    """GET /healthz and POST /infer in turn, every `interval_s`, timing each answer."""

    def __init__(self, url: str, interval_s: float = 0.2) -> None:
        self.url, self.interval_s = url, interval_s
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.wait(self.interval_s):
                for route in ("/healthz", "/infer"):
                    t = time.monotonic()
                    try:
                        if route == "/infer":
                            code = http.post(self.url + route, json=SEED_BODY).status_code
                        else:
                            code = http.get(self.url + route).status_code
                    except httpx.HTTPError:
                        code = 0
                    self.calls.append(Call(t, route, code, time.monotonic() - t))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def between(self, route: str, start: float, end: float = float("inf")) -> list[Call]:
        return [c for c in self.calls if c.route == route and start <= c.t < end]

    def first(self, route: str, code: int, after: float) -> Call | None:
        return next((c for c in self.between(route, after) if c.code == code), None)


BRIDGE_TIMEOUT_MS = 2000


def test_cut_bridge_answers_503_at_once_and_recovers(
    netns: NetNamespace, broker: Broker, start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    # STATUS_INTERVAL_S 10 (the default) on both: a worker's status goes stale only after
    # 30 s, so what the bridge sees in the first seconds is its own link, not staleness.
    start_worker(worker_id="w-bridged", status_interval_s=10)
    bridge = BridgeProcess(
        broker.port, tmp_path, http_host=netns.ns_ip, prefix=netns.command([]),
        mqtt_host=netns.host_ip, mqtt_keepalive_s=KEEPALIVE_S, status_interval_s=10,
        bridge_timeout_ms=BRIDGE_TIMEOUT_MS, log_format="json").start()
    assert bridge.proc is not None
    netns.adopt(bridge.proc)
    probe = BridgeProbe(bridge.url)
    wait_until(lambda: probe.first("/infer", 200, 0) is not None, 20, "a first /infer 200")
    cut_at = time.monotonic()
    netns.cut(ports=[broker.port])  # the bridge's HTTP port stays reachable
    time.sleep(2 * KEEPALIVE_S + 2 * SLACK_S)
    healed_at = time.monotonic()
    netns.heal()
    wait_until(lambda: probe.first("/infer", 200, healed_at) is not None, 40,
               "/infer to answer 200 again")
    wait_until(lambda: probe.first("/healthz", 200, healed_at) is not None, 10,
               "/healthz to answer 200 again")
    time.sleep(1.0)
    probe.stop()
    bridge.kill()

    noticed = lines_matching(bridge.log_path, r"disconnected from the broker", after=cut_at)
    assert noticed, f"the bridge never logged the lost link:\n{bridge.log()[-3000:]}"
    noticed_at = noticed[0].t
    blind = probe.between("/infer", cut_at, noticed_at)
    aware = probe.between("/infer", noticed_at + 0.3, healed_at)
    health_aware = probe.between("/healthz", noticed_at + 0.3, healed_at)
    first_503 = probe.first("/healthz", 503, cut_at)
    infer_ok = probe.first("/infer", 200, healed_at)
    health_ok = probe.first("/healthz", 200, healed_at)
    assert first_503 and infer_ok and health_ok
    print(f"\nthe bridge noticed the cut after {noticed_at - cut_at:.2f} s; before that "
          f"/infer answered {sorted({c.code for c in blind})} taking up to "
          f"{max((c.seconds for c in blind), default=0):.2f} s; /healthz 503 "
          f"{first_503.t - cut_at:.2f} s after the cut; once it knew, /infer {len(aware)}x "
          f"{sorted({c.code for c in aware})} in at most "
          f"{max((c.seconds for c in aware), default=0) * 1000:.0f} ms; after the link came "
          f"back /infer 200 in {infer_ok.t - healed_at:.2f} s, /healthz 200 in "
          f"{health_ok.t - healed_at:.2f} s")
    # Today paho's keepalive tells it (K to 2 x K); a bridge that checks sooner may be faster.
    assert noticed_at - cut_at < CLIENT_NOTICES_S[1] + SLACK_S
    # Once the bridge knows it has no broker: 503 at once, never after BRIDGE_TIMEOUT_MS.
    assert aware and {c.code for c in aware} == {503}
    assert max(c.seconds for c in aware) < 0.5
    assert health_aware and {c.code for c in health_aware} == {503}
    # Before it knows, a request waits for its timeout (504): the delay issue 15 asks to
    # remove, in the bridge's code (another engineer's; what is needed is in the README). Any
    # other answer than these three, or a request that outlives its timeout, is a fault.
    assert {c.code for c in blind} <= {200, 503, 504}
    assert max((c.seconds for c in blind), default=0) < BRIDGE_TIMEOUT_MS / 1000 + 1.0
    assert infer_ok.t - healed_at < RECONNECT_MAX_S + CONNECT_TIMEOUT_S + SLACK_S


# -- 6. a cut sensor -----------------------------------------------------------------------------

SIM_SENSORS = 2
SIM_RATE = 10  # windows/s per sensor
SIM_COUNT = 200  # per sensor: 20 s of windows


@pytest.fixture
def watch(broker: Broker) -> Iterator[Callable[..., Collector]]:
    """`watch(topics)`: a Collector on loopback, closed after the test."""
    made: list[Collector] = []

    def make(*topics: str) -> Collector:
        made.append(Collector(broker.port, topics=topics))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_cut_sensor_sends_what_it_could_not_after_the_link_returns(
    netns: NetNamespace, broker: Broker, start_worker: Callable[..., WorkerProcess],
    watch: Callable[..., Collector], tmp_path: Path,
) -> None:
    start_worker(worker_id="w-for-sim")
    answers = watch("infer/+/result", "infer/+/error")
    windows = watch("imu/+/window")  # what reached the broker, as it did
    sim = SimProcess(
        broker.port, ["--sensors", str(SIM_SENSORS), "--rate", str(SIM_RATE),
                      "--count", str(SIM_COUNT), "--qos", "1", "--prefix", "nfsim",
                      "--seed", "1"],
        tmp_path, prefix=netns.command([]), mqtt_host=netns.host_ip,
        mqtt_keepalive_s=KEEPALIVE_S).start()
    assert sim.proc is not None
    netns.adopt(sim.proc)
    wait_until(lambda: len(windows.on("imu/")) >= 30, 20, "the simulator's first windows")
    netns.cut()
    sent_before = len(windows.on("imu/"))
    time.sleep(2 * KEEPALIVE_S + SLACK_S)
    netns.heal()
    assert sim.wait(60) == 0, sim.log()
    time.sleep(1.0)

    def keys(messages: list[Any]) -> set[tuple[str, int]]:
        out = set()
        for m in messages:
            doc = m.doc()
            out.add((str(m.topic.split("/")[1]), int(doc["seq"])))
        return out

    wanted = {(f"nfsim-{i}", seq) for i in range(SIM_SENSORS) for seq in range(SIM_COUNT)}
    delivered = keys(windows.on("imu/"))
    answered = keys([m for m in answers.answers() if m.topic.split("/")[1].startswith("nfsim")])
    arrivals = windows.on("imu/")
    log = sim.log()
    progress = [line for line in log.splitlines() if line.startswith("[")]
    said = [line for line in progress if "disconnect" in line.lower()]
    print(f"\n{sent_before} windows reached the broker before the cut, {len(delivered)} of "
          f"{len(wanted)} in all ({len(arrivals) - len(delivered)} twice), {len(answered)} "
          f"answered; the simulator's last line: {progress[-1] if progress else '-'}; its "
          f"progress lines that mention the cut: {said}")
    assert delivered == wanted, sorted(wanted - delivered)[:10]
    assert answered == wanted, sorted(wanted - answered)[:10]
    assert "disconnected from the broker" in log  # its link's warning
    assert said, f"no progress line says the simulator was disconnected:\n{log[-3000:]}"


# -- what a keepalive costs on a metered link --------------------------------------------------

IDLE_KEEPALIVE_S = 2
IDLE_STATUS_S = 2
IDLE_S = 12.0
ETHERNET_HEADER = 14


def _idle_traffic(netns: NetNamespace) -> tuple[int, int]:
    """(IP-layer bytes, packets) across the veth in IDLE_S."""
    time.sleep(1.0)
    bytes0, packets0 = netns.traffic()
    time.sleep(IDLE_S)
    bytes1, packets1 = netns.traffic()
    frames = packets1 - packets0
    return (bytes1 - bytes0) - ETHERNET_HEADER * frames, frames


def test_keepalive_traffic_of_an_idle_worker(netns: NetNamespace, worker_in_ns: Starter) -> None:
    # An idle worker whose status refresh is out of the way: all that crosses the link is
    # paho's PINGREQ, Mosquitto's PINGRESP, their TCP acknowledgements (and ARP now and then).
    w = worker_in_ns("w-idle", mqtt_keepalive_s=IDLE_KEEPALIVE_S, status_interval_s=3600)
    ping_bytes, ping_frames = _idle_traffic(netns)
    w.kill()
    # The other way round: a status refresh every IDLE_STATUS_S and a keepalive that never
    # comes due, since paho pings only after a keepalive with no packet out or in.
    worker_in_ns("w-status", mqtt_keepalive_s=60, status_interval_s=IDLE_STATUS_S)
    status_bytes, status_frames = _idle_traffic(netns)
    pings, statuses = IDLE_S / IDLE_KEEPALIVE_S, IDLE_S / IDLE_STATUS_S
    per_ping, per_status = ping_bytes / pings, status_bytes / statuses
    per_hour = {k: round(per_ping * 3600 / k / 1024, 1) for k in (4, 15, 30, 60, 300)}
    print(f"\nidle, keepalive {IDLE_KEEPALIVE_S} s: {ping_frames} packets, {ping_bytes} bytes "
          f"at the IP layer in {IDLE_S:.0f} s: {per_ping:.0f} bytes and "
          f"{ping_frames / pings:.1f} packets a keepalive; KiB an hour by keepalive: "
          f"{per_hour}\nidle, status every {IDLE_STATUS_S} s: {per_status:.0f} bytes and "
          f"{status_frames / statuses:.1f} packets a status; at the default 10 s "
          f"{per_status * 360 / 1024:.1f} KiB an hour")
    # One keepalive is PINGREQ and PINGRESP (2 bytes of MQTT each) in TCP/IP with timestamps
    # (52 bytes of headers) and their ACKs: 3 or 4 packets, 160 to 220 bytes, and ARP.
    assert 2 <= ping_frames / pings <= 5, ping_frames
    assert 100 <= per_ping <= 300, per_ping
    assert per_status > per_ping  # a status is a JSON document and its PUBACK
