"""Sustained overload, and one slow member in a shared group (issue #12).

    python bench/bench_overload.py                 # 60 s of 3 x capacity, then the group runs
    python bench/bench_overload.py --seconds 20    # shorter
    python bench/bench_overload.py --only group

overload  one worker on the HailoRT test double (4 ms + 0.4 ms a frame: 1,111 windows/s at batch
          8) offered 3 x that, open loop, for --seconds. Prints results per second against the
          double's capacity, the worker's memory over the run (first and last fifth), and what
          the broker held and dropped (its $SYS counters: the backlog waits there, in the
          worker's session, bounded by max_queued_messages). The broker runs
          mosquitto/dev.conf with the production config's bounds (max_queued_messages,
          max_queued_bytes, max_inflight_bytes, memory_limit) unless --dev-bounds.
group     three workers in one shared group, at a rate the three share easily, twice: all three
          on a fast double (1 ms + 0.1 ms a frame), then one of them on a slow one (20 ms + 2 ms a
          frame, 222 windows/s, below its round-robin share). Prints each member's answers and
          latency: Mosquitto hands every member its share whether or not it keeps up.

Starts its own Mosquitto ($SYS every second) and leaves nothing running.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from bench_pipeline import REPO, Bench, StatusWatch
from broker_util import start_broker
from paho.mqtt.enums import CallbackAPIVersion

BATCH = 8
OVERLOAD_DEVICE = (4.0, 0.4)
FAST, SLOW = (1.0, 0.1), (20.0, 2.0)
BOUNDS = ("max_queued_messages", "max_queued_bytes", "max_inflight_bytes", "memory_limit")
SYS_TOPICS = ("$SYS/broker/store/messages/count", "$SYS/broker/publish/messages/dropped",
              "$SYS/broker/heap/current")


def capacity(device: tuple[float, float]) -> float:
    ms, per_frame = device
    return BATCH / (ms + per_frame * BATCH) * 1000


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="overload duration (60)")
    p.add_argument("--factor", type=float, default=3.0, help="offered load / capacity (3)")
    p.add_argument("--group-seconds", type=float, default=15.0, help="each group run (15)")
    p.add_argument("--group-rate", type=float, default=900.0,
                   help="windows/s offered to the group (900: 300 a member, more than the slow "
                   "one can do)")
    p.add_argument("--dev-bounds", action="store_true",
                   help="keep dev.conf's queue bounds instead of the production config's")
    p.add_argument("--only", choices=["overload", "group"], help="run one part only")
    return p


class BrokerStats:
    """The broker's $SYS counters, newest value of each."""

    def __init__(self, port: int) -> None:
        self.values: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(
            [(t, 0) for t in SYS_TOPICS])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            value = float(msg.payload)
        except ValueError:
            return
        name = msg.topic.rsplit("/", 2)[-2] + "/" + msg.topic.rsplit("/", 1)[-1]
        self.values[name] = value
        self.peak[name] = max(value, self.peak.get(name, value))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Rss:
    """A process's resident memory, sampled every half second."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.samples.append(self.proc.memory_info().rss / 2**20)
            except psutil.Error:
                return

    def stop(self) -> str:
        self._stop.set()
        self._thread.join(2)
        n = max(1, len(self.samples) // 5)
        first, last = self.samples[:n], self.samples[-n:]
        return (f"worker RSS {min(first):.0f}-{max(first):.0f} MiB in the first fifth, "
                f"{min(last):.0f}-{max(last):.0f} MiB in the last, peak {max(self.samples):.0f}")


def overload(bench: Bench, a: argparse.Namespace, limits: list[str]) -> list[str]:
    cap = capacity(OVERLOAD_DEVICE)
    rate = cap * a.factor
    bench.args.duration, bench.args.warmup = a.seconds, 2.0
    stats = BrokerStats(bench.broker.port)
    with bench.worker(**bench.hailo_settings(*OVERLOAD_DEVICE)) as worker:
        rss = Rss(worker.pid)
        run = bench.load("overload", "bin", worker, "--mode", "rate", "--rate", f"{rate:.0f}",
                         "--latency", "--device", ",".join(map(str, OVERLOAD_DEVICE)),
                         "--drain", "0")
        memory = rss.stop()
        time.sleep(1.5)  # one more $SYS interval
    stats.close()
    ratio = run["rate"] / cap
    held = stats.peak.get("messages/count", float("nan"))
    dropped = stats.values.get("messages/dropped", float("nan"))
    return [
        f"overload: {run['send_rate']:.0f} windows/s offered for {a.seconds:g} s "
        f"({a.factor:g} x the double's {cap:.0f}): {run['rate']:.0f} results/s = "
        f"{ratio:.2f} of capacity, device busy {run.get('device_busy', 0):.2f}, "
        f"{run['errors']} errors",
        f"  {memory}",
        f"  broker: at most {held:.0f} messages held, {dropped:.0f} dropped in all "
        f"({', '.join(limits)}); {run['unanswered']} windows still unanswered when the worker was "
        "stopped",
        f"  {'PASS' if ratio >= 0.9 else 'FAIL'}  results / capacity under {a.factor:g} x "
        f"overload (>= 0.90): {ratio:.2f}",
    ]


def group(bench: Bench, a: argparse.Namespace) -> list[str]:
    lines = [f"shared group of three at {a.group_rate:.0f} windows/s for {a.group_seconds:g} s "
             f"(fast double {capacity(FAST):.0f} w/s, slow {capacity(SLOW):.0f} w/s):"]
    bench.args.duration, bench.args.warmup = a.group_seconds, 1.0
    for label, devices in (("three fast", [FAST, FAST, FAST]), ("one slow", [FAST, FAST, SLOW])):
        with _members(bench, devices) as procs:
            run = bench.load(f"group {label}", "bin", procs[0], "--mode", "rate",
                             "--rate", f"{a.group_rate:.0f}", "--latency", "--drain", "60")
        lat = run.get("latency_ms", {})
        served = sum(f["answered"] for f in run.get("by_worker", {}).values())
        lines.append(f"  {label}: {served} results, {run['unanswered']} unanswered; "
                     f"all: p50 {lat.get('p50', 0):.1f} ms, p99 {lat.get('p99', 0):.1f} ms, "
                     f"max {lat.get('max', 0):.0f} ms")
        for worker_id, figures in run.get("by_worker", {}).items():
            lines.append(f"    {worker_id:<18} {figures['answered']:>6} answered, p50 "
                         f"{figures['p50']:8.1f} ms, p99 {figures['p99']:8.1f} ms")
    return lines


class _members:
    """Three workers in one shared group, each on its own double."""

    def __init__(self, bench: Bench, devices: list[tuple[float, float]]) -> None:
        self.contexts = [
            bench.worker(SHARED_GROUP="bench", WORKER_ID=f"member-{i}-{ms:g}ms",
                         **bench.hailo_settings(ms, per_frame))
            for i, (ms, per_frame) in enumerate(devices)]

    def __enter__(self) -> list[Any]:
        return [c.__enter__() for c in self.contexts]

    def __exit__(self, *exc: Any) -> None:
        for c in self.contexts:
            c.__exit__(None, None, None)


def bounds(conf: str) -> list[str]:
    """The lines of `conf` (a file in mosquitto/) that set the queue and memory bounds."""
    text = (REPO / "mosquitto" / conf).read_text().splitlines()
    return [line.strip() for line in text if line.split(" ", 1)[0] in BOUNDS]


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    harness = argparse.Namespace(duration=a.seconds, warmup=2.0, outstanding=128, worker_env=[],
                                 candidate=[], quiet_cores=10.0, quiet_wait=0.0)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        workdir = Path(tmp)
        # Mosquitto takes the last value of a setting: these override dev.conf's.
        limits = bounds("dev.conf" if a.dev_bounds else "mosquitto.conf")
        conf = "\n".join([(REPO / "mosquitto" / "dev.conf").read_text(), *limits,
                          "sys_interval 1", ""])
        broker = start_broker(conf, workdir / "broker")
        watch = StatusWatch(broker.port)
        bench = Bench(harness, broker, watch, workdir)
        try:
            if a.only in (None, "overload"):
                lines += overload(bench, a, limits)
            if a.only in (None, "group"):
                lines += group(bench, a)
        finally:
            watch.close()
            broker.stop()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
