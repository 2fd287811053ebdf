"""The load generator: publishes windows, receives the answers, and measures both.

    python bench/load.py --port PORT --mode closed --outstanding 128 --duration 5 ...
    python bench/load.py --port PORT --mode rate --rate 200 --latency ...
    python bench/load.py --port PORT --mode burst --count 20000 ...

`closed` (saturating): keeps --outstanding windows unanswered at all times, a new one for each
answer, so whatever sits between publisher and subscriber runs flat out and its queue never
overflows. `rate` (steady): publishes on a fixed schedule and, with --latency, measures each
window's round trip (send to answer, one clock, this process). `--echo` subscribes to its own
windows, with nothing in between: the publisher's (and broker's) own ceiling.

It is built not to be the bottleneck, since it shares the cores with what it measures: a
minimal MQTT client (rawmqtt.py) driven by one `select` loop, payloads pre-encoded with only
`seq` and `ts` patched in, answers counted without decoding unless a figure needs them. Its
own CPU per window is reported with the others; `--echo` gives its ceiling.

CPU time of the processes named by --pid (user + system, all threads) is sampled at the
start and end of the measured interval. One JSON object is printed on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import select
import struct
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import psutil
from rawmqtt import RawClient

SEQ = struct.Struct(">I")
TS = struct.Struct(">d")
_SEQ_MARK = b"\xa3seq\xce"  # fixstr "seq", then uint32
_TS_MARK = b"\xa2ts\xcb"  # fixstr "ts", then float64
TEMPLATES = 8


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["closed", "rate", "burst"], default="closed")
    p.add_argument("--outstanding", type=int, default=128,
                   help="closed mode: windows kept unanswered (default 128)")
    p.add_argument("--rate", type=float, default=200.0, help="rate mode: windows per second")
    p.add_argument("--count", type=int, default=20000, help="burst mode: windows (20000)")
    p.add_argument("--inflight", type=int, default=20,
                   help="burst mode: windows sent but not yet acknowledged by the broker (20)")
    p.add_argument("--answer-timeout", type=float, default=120.0,
                   help="burst mode: longest wait for the last answer, in seconds (120)")
    p.add_argument("--published-file", type=Path,
                   help="burst mode: written once every window is acknowledged by the broker")
    p.add_argument("--form", choices=["bin", "lists"], default="bin",
                   help="compact msgpack bin, or msgpack list of lists")
    p.add_argument("--sensors", type=int, default=8, help="sensor ids used round robin")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    p.add_argument("--latency", action="store_true", help="decode answers, time round trips")
    p.add_argument("--drain", type=float, default=5.0,
                   help="seconds to wait for the last answers after the measured interval (5)")
    p.add_argument("--device", metavar="MS,PER_FRAME_MS",
                   help="decode answers and add up a device double's busy time from their "
                   "batch_size (implies --latency)")
    p.add_argument("--echo", action="store_true",
                   help="subscribe to our own windows: the publisher's ceiling")
    p.add_argument("--pid", action="append", default=[], metavar="NAME=PID",
                   help="a process whose CPU time to measure (repeatable)")
    return p


def payload_parts(form: str, rng: np.random.Generator) -> list[tuple[bytes, bytes, bytes]]:
    """Windows split around their `seq` and `ts` values: (head, middle, tail)."""
    parts = []
    for _ in range(TEMPLATES):
        t = np.arange(100, dtype=np.float32)[:, None] / 50
        x = (np.sin(t * rng.uniform(0.5, 3, 9) + rng.uniform(0, 6, 9)) * rng.uniform(0.1, 9, 9)
             + rng.normal(0, 0.05, (100, 9))).astype(np.float32)
        doc: dict[str, Any] = {"seq": 0xFFFFFFFF, "ts": 0.5}
        if form == "bin":
            doc.update(x=x.tobytes(), shape=[100, 9], dtype="<f4")
        else:
            doc["x"] = x.tolist()
        raw = msgpack.packb(doc, use_bin_type=True)
        s = raw.index(_SEQ_MARK) + len(_SEQ_MARK)
        t_at = raw.index(_TS_MARK, s) + len(_TS_MARK)
        parts.append((raw[:s], raw[s + 4:t_at], raw[t_at + 8:]))
    return parts


@dataclass
class Tally:
    answered: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    by_worker: dict[str, list[float]] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    device_busy_s: float = 0.0


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.parts = payload_parts(args.form, np.random.default_rng(7))
        self.topics = [RawClient.topic_field(f"imu/load-{i}/window") for i in range(args.sensors)]
        self.decode = bool(args.latency or args.device)
        self.device: tuple[float, float] | None = None
        if args.device:
            ms, per_frame = (float(v) / 1000 for v in args.device.split(","))
            self.device = (ms, per_frame)
        self.seq = 0
        self.sent_at: dict[int, float] = {}
        self.measuring = False
        self.t0 = self.t1 = math.inf  # the measured interval, once known
        self.total = Tally()
        self.window = Tally()  # answers that arrived in the measured interval
        self.sent_in_window = 0
        self.client = RawClient(args.host, args.port, f"bench-load-{uuid.uuid4().hex[:8]}")
        self.client.subscribe(["imu/+/window"] if args.echo
                              else ["infer/+/result", "infer/+/error"])

    def receive(self) -> int:
        """Handle what the broker sent; returns how many answers came."""
        messages = self.client.read()
        now = time.perf_counter()
        tallies = (self.total, self.window) if self.measuring else (self.total,)
        for topic, payload in messages:
            error = topic.endswith(b"/error")
            for t in tallies:
                if error:
                    t.errors += 1
                else:
                    t.answered += 1
            if self.decode:
                self._timed(payload, now)
        return len(messages)

    def _timed(self, payload: memoryview, now: float) -> None:
        doc = msgpack.unpackb(payload, raw=False)
        sent = self.sent_at.pop(doc.get("seq"), None)
        w = self.window
        n = doc.get("batch_size")
        if self.measuring and isinstance(n, int) and n > 0:
            # Batches and device time follow the answers counted in the rate: arrivals.
            w.batch_sizes.append(n)
            if self.device is not None:
                w.device_busy_s += (self.device[0] + self.device[1] * n) / n
        # Round trips follow the windows sent in the interval, however late they come back.
        if sent is not None and self.t0 <= sent <= self.t1:
            w.latencies.append(now - sent)
            w.by_worker.setdefault(str(doc.get("worker_id")), []).append(now - sent)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self) -> None:
        seq = self.seq
        self.seq += 1
        head, middle, tail = self.parts[seq % TEMPLATES]
        payload = b"".join((head, SEQ.pack(seq & 0xFFFFFFFF), middle, TS.pack(time.time()), tail))
        if self.decode:
            self.sent_at[seq] = time.perf_counter()
        if self.measuring:
            self.sent_in_window += 1
        self.client.publish(self.topics[seq % len(self.topics)], payload)

    # -- the loop -----------------------------------------------------------------------------

    def pump(self, timeout: float) -> int:
        c = self.client
        readable, _, _ = select.select([c], [c] if c.want_write() else [], [], timeout)
        answers = self.receive() if readable else 0
        c.flush()
        return answers

    def burst(self, pids: dict[str, psutil.Process]) -> dict[str, Any]:
        """Open loop: everything sent at the broker's pace, answers awaited only at the end."""
        a, c = self.args, self.client
        pids = {"load": psutil.Process(), **pids}
        gc.collect()
        gc.freeze()
        cpu0 = {n: _cpu(p) for n, p in pids.items()}
        ctx0 = {n: _switches(p) for n, p in pids.items()}
        host0 = _host_busy()
        self.t0, self.measuring = time.perf_counter(), True
        while self.seq < a.count:
            while self.seq < a.count and self.seq - c.acked < a.inflight:
                self.publish()
            self.pump(0.05)
        while c.acked < a.count:
            self.pump(0.05)
        published_s = time.perf_counter() - self.t0
        if a.published_file is not None:
            a.published_file.write_text(f"{a.count}\n")
        deadline = time.monotonic() + a.answer_timeout
        last = time.perf_counter()
        while self.total.answered + self.total.errors < a.count and time.monotonic() < deadline:
            if self.pump(0.05):
                last = time.perf_counter()
        self.measuring, self.t1 = False, last
        cpu1 = {n: _cpu(p) for n, p in pids.items()}
        ctx1 = {n: _switches(p) for n, p in pids.items()}
        host1 = _host_busy()
        self.client.close()
        report = self._report(cpu0, cpu1)
        report["published_s"] = published_s
        report["last_answer_clock"] = last
        report["switches_per_window"] = {
            n: (ctx1[n] - ctx0[n]) / max(report["answered"] + report["errors"], 1) for n in ctx0}
        report["others_cores"] = (host1 - host0 - sum(report["cpu_s"].values())) / (
            report["elapsed_s"])
        return report

    def run(self, pids: dict[str, psutil.Process]) -> dict[str, Any]:
        a = self.args
        if a.mode == "burst":
            return self.burst(pids)
        pids = {"load": psutil.Process(), **pids}
        gc.collect()
        gc.freeze()  # a full collection would land in the latency figures
        start = time.perf_counter()
        measure_at, end_at = start + a.warmup, start + a.warmup + a.duration
        interval = 1.0 / a.rate
        next_due = start
        closed = a.mode == "closed"
        if closed:
            for _ in range(a.outstanding):
                self.publish()
        cpu0: dict[str, float] = {}
        cpu1: dict[str, float] = {}
        ctx0: dict[str, int] = {}
        ctx1: dict[str, int] = {}
        host0 = host1 = 0.0
        while True:
            now = time.perf_counter()
            if not cpu0 and now >= measure_at:
                cpu0, host0 = {n: _cpu(p) for n, p in pids.items()}, _host_busy()
                ctx0 = {n: _switches(p) for n, p in pids.items()}
                self.t0, self.measuring = time.perf_counter(), True
            elif self.measuring and now >= end_at:
                self.measuring, self.t1 = False, time.perf_counter()
                cpu1, host1 = {n: _cpu(p) for n, p in pids.items()}, _host_busy()
                ctx1 = {n: _switches(p) for n, p in pids.items()}
                break
            boundary = end_at if cpu0 else measure_at
            if closed:
                for _ in range(self.pump(min(0.05, max(0.0, boundary - now)))):
                    self.publish()
            else:
                while next_due <= now:
                    self.publish()
                    next_due += interval
                self.client.flush()
                self.pump(max(0.0, min(next_due, boundary) - now))
        self._drain(a.drain)
        self.client.close()
        report = self._report(cpu0, cpu1)
        report["switches_per_window"] = {
            n: (ctx1[n] - ctx0[n]) / max(report["answered"] + report["errors"], 1) for n in ctx0}
        report["others_cores"] = (host1 - host0 - sum(report["cpu_s"].values())) / (
            report["elapsed_s"])
        return report

    def _drain(self, timeout: float) -> None:
        """Let the last answers arrive, so the next run starts on an idle broker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.total.answered + self.total.errors >= self.seq:
                return
            self.pump(0.05)

    def _report(self, cpu0: dict[str, float], cpu1: dict[str, float]) -> dict[str, Any]:
        w, elapsed = self.window, self.t1 - self.t0
        answers = w.answered + w.errors
        out: dict[str, Any] = {
            "mode": self.args.mode, "form": self.args.form, "elapsed_s": elapsed,
            "sent": self.sent_in_window, "answered": w.answered, "errors": w.errors,
            "rate": w.answered / elapsed, "send_rate": self.sent_in_window / elapsed,
            "unanswered": self.seq - self.total.answered - self.total.errors,
            "cpu_s": {n: cpu1[n] - cpu0[n] for n in cpu0},
            "cpu_us_per_window": {n: (cpu1[n] - cpu0[n]) / max(answers, 1) * 1e6 for n in cpu0},
        }
        if w.latencies:
            out["latency_ms"] = _quantiles(w.latencies)
            out["latency_samples"] = len(w.latencies)
        if len(w.by_worker) > 1:
            out["by_worker"] = {k: {"answered": len(v), **_quantiles(v)}
                                for k, v in sorted(w.by_worker.items())}
        if w.batch_sizes:
            out["mean_batch"] = sum(w.batch_sizes) / len(w.batch_sizes)
        if self.device is not None:
            out["device_busy"] = w.device_busy_s / elapsed
        return out


def _quantiles(seconds: list[float]) -> dict[str, float]:
    lat = sorted(seconds)
    return {q: lat[min(len(lat) - 1, int(len(lat) * f))] * 1000
            for q, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))}


def _switches(proc: psutil.Process) -> int:
    """Context switches of every thread of `proc`: each is a sleep and a wake-up, the cost
    that separates a threaded pipeline from a single-threaded relay. psutil reads only the
    main thread's; Linux keeps every thread's in /proc/PID/task/*/status."""
    total = 0
    try:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    except OSError:
        c = proc.num_ctx_switches()
        return int(c.voluntary + c.involuntary)
    return total


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _host_busy() -> float:
    """CPU seconds the whole machine spent busy (steal included: a noisy neighbour too)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0)
                 - getattr(t, "guest_nice", 0.0))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    pids = {}
    for item in args.pid:
        name, _, pid = item.partition("=")
        pids[name] = psutil.Process(int(pid))
    print(json.dumps(Load(args).run(pids)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
