"""The pipeline benchmark: the worker's own cost, against a bare relay, in one run.

    python bench/bench_pipeline.py [--duration S] [--repeats N] [--scenarios LIST] [--record]

Starts its own Mosquitto (mosquitto/dev.conf on a free loopback port) and, run by run, the
process under test and a load generator (bench/load.py), then prints one table:

  ceiling   the publisher and broker alone (load.py --echo), then the bare relay
            (bench/relay.py) driven by the same publisher: windows/s and relay CPU per window
  worker    the real worker (stub backend, default batching), same load: windows/s and CPU
            per window, each as a ratio to the relay's; relay and worker runs alternate
  latency   the worker's round trip p50/p99 at 200 windows/s and at 80% of its measured
            capacity, with a steady-rate publisher
  burst     open loop, as sensors load it after a reconnect: 20,000 windows published as fast as
            the broker acknowledges them, nobody waiting for answers; relay and worker
            alternate. Every window must be answered with a result
  backlog   a worker killed (-9) while 6,000 windows are published, then restarted: its
            persistent session hands it the whole backlog at once; all must be answered
  device    the worker on the HailoRT test double (per-batch latency L + p x frames): windows/s
            against the double's capacity at the batch size, and how busy it was kept; and on
            a double that takes no time, the most this host can feed any device

Every figure is the median of --repeats runs; a ratio to the relay is the median of the
per-round ratios (a worker run against the relay run just before it). CPU is user + system
time of the process (all threads) over the measured interval, divided by the windows answered
in it; context switches are summed over its threads. `--candidate NAME=DIR` runs a patched
copy of the worker package (DIR/worker) in the same rounds, to price a change before making
it. `--record` appends the table to bench/README.md with the date, machine and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "hailo_double"))

from broker_util import Broker, start_broker  # noqa: E402
from pipeline_report import candidates, devices, kind_of, median, table  # noqa: E402

SCENARIOS = ("ceiling", "worker", "burst", "backlog", "latency", "device")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (5)")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds first (1.5)")
    p.add_argument("--repeats", type=int,
                   help="runs of each kind; medians (5; 3 with --quick)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)} (all)")
    p.add_argument("--forms", default="bin,lists", help="window forms: bin,lists (both)")
    p.add_argument("--quick", action="store_true",
                   help="short runs (2 s measured, 1 s warm-up): the `make bench` default")
    p.add_argument("--outstanding", type=int, default=128,
                   help="windows kept unanswered by the saturating publisher (128)")
    p.add_argument("--burst", type=int, default=20000, help="windows in a burst (20000)")
    p.add_argument("--backlog", type=int, default=6000,
                   help="windows published while the worker is down (6000)")
    p.add_argument("--light-rate", type=float, default=200.0, help="light load, windows/s")
    p.add_argument("--load-fraction", type=float, default=0.8,
                   help="heavy latency load as a fraction of measured capacity (0.8)")
    p.add_argument("--device", action="append", metavar="MS,PER_FRAME_MS",
                   help="a device double's time per batch: MS + PER_FRAME_MS x frames "
                   "(repeatable; default 1,0.1 and 4,0.4)")
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra setting for every worker run (repeatable)")
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=DIR",
                   help="also run the worker package found in DIR (a patched copy: DIR/worker), "
                   "alternating with the others, shown as `worker NAME` (repeatable)")
    p.add_argument("--quiet-cores", type=float, default=0.5,
                   help="before each run, wait until other processes use less than this many "
                   "cores (0.5)")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="longest wait for that, in seconds (30; 0 never waits)")
    p.add_argument("--quiet-budget", type=float, default=120.0,
                   help="all those waits together, in seconds (120)")
    p.add_argument("--record", action="store_true", help="append the table to bench/README.md")
    p.add_argument("--json", type=Path, help="also write every run's raw figures here")
    return p


# -- processes ----------------------------------------------------------------------------------


class StatusWatch:
    """Follows hailo/+/status, so a worker run starts when the worker says `online`."""

    def __init__(self, port: int) -> None:
        self.states: dict[str, str] = {}
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"bench-watch-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("hailo/+/status", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            state = str(json.loads(msg.payload)["state"])
        except (ValueError, KeyError, TypeError):
            return
        with self.cond:
            self.states[msg.topic.split("/")[1]] = state
            self.cond.notify_all()

    def wait(self, worker_id: str, state: str, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.states.get(worker_id) == state, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Bench:
    args: argparse.Namespace
    broker: Broker
    watch: StatusWatch
    workdir: Path
    hef: Path | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    background: float = 0.0
    settle_budget: float = 0.0
    round: int = 0

    def settle(self) -> None:
        """Wait (a while) for other people's work on this machine to calm down."""
        started = time.monotonic()
        deadline = started + min(self.args.quiet_wait, self.settle_budget)
        while True:
            before = host_busy()
            time.sleep(0.5)
            busy = (host_busy() - before) / 0.5
            if busy <= self.args.quiet_cores or time.monotonic() >= deadline:
                self.background = busy
                # A busy machine must not stretch a run without bound: the waits share a budget.
                self.settle_budget = max(0.0, self.settle_budget - (time.monotonic() - started))
                return

    @contextmanager
    def relay(self) -> Iterator[subprocess.Popen[str]]:
        proc = subprocess.Popen([sys.executable, str(BENCH / "relay.py"),
                                 "--port", str(self.broker.port)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 15)
            if not ready or proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the relay did not subscribe")
            yield proc
        finally:
            _stop(proc)

    @contextmanager
    def worker(self, variant: str = "", **settings: str) -> Iterator[subprocess.Popen[str]]:
        worker_id = settings.pop("WORKER_ID", f"bench-{uuid.uuid4().hex[:6]}")
        env = {**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(self.broker.port),
               "WORKER_ID": worker_id, "METRICS_PORT": "0",
               # Each run is a new worker id: a persistent session left behind would have the
               # broker queue a copy of every later window for it, slowing every later run.
               "SESSION_EXPIRY_S": "0", **settings}
        extra = list(self.args.worker_env)
        if variant:
            extra.append(f"PYTHONPATH={dict(candidates(self.args))[variant]}")
        for item in extra:
            name, value = item.split("=", 1)
            if name == "PYTHONPATH" and env.get(name):  # a patched worker and the double
                value = os.pathsep.join((value, env[name]))
            env[name] = value
        log = (self.workdir / f"{worker_id}.log").open("a")
        proc = subprocess.Popen([sys.executable, "-m", "worker"], env=env, cwd=self.workdir,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            if variant:
                self._check_import(env, dict(candidates(self.args))[variant])
            if not self.watch.wait(worker_id, "online", 30):
                raise RuntimeError(f"worker not online; see {log.name}")
            yield proc
        finally:
            _stop(proc)
            log.close()

    def _check_import(self, env: dict[str, str], where: str) -> None:
        """A candidate must really run from its directory, not the installed package."""
        out = subprocess.run([sys.executable, "-c", "import worker; print(worker.__file__)"],
                             env=env, cwd=self.workdir, capture_output=True, text=True)
        if not out.stdout.strip().startswith(where.rstrip(os.sep) + os.sep):
            raise RuntimeError(f"the candidate imports {out.stdout.strip()}, not from {where}")

    def hailo_settings(self, ms: float, per_frame_ms: float) -> dict[str, str]:
        if self.hef is None:
            import make_hef  # the double's HEF writer (tests/hailo_double)

            # The double needs a model to load; told not to run it (HAILO_DOUBLE_COMPUTE=0),
            # it keeps the host CPU a real chip would not take out of the worker's figures.
            onnx = make_hef.write_tiny_onnx(self.workdir / "tiny.onnx")
            self.hef = make_hef.write_hef(self.workdir / "bench.hef", onnx)
        return {"INFER_MODE": "hailo", "HEF_PATH": str(self.hef),
                "HAILO_DOUBLE_LATENCY_MS": str(ms),
                "HAILO_DOUBLE_PER_FRAME_MS": str(per_frame_ms),
                "HAILO_DOUBLE_COMPUTE": "0",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO / "tests" / "hailo_double"),
                                  os.environ.get("PYTHONPATH")]))}

    def backlog(self, variant: str) -> None:
        """kill -9, a backlog published to the worker's persistent session, then a restart."""
        a = self.args
        worker_id = f"bench-backlog-{uuid.uuid4().hex[:6]}"
        persistent = {"SESSION_EXPIRY_S": "600", "WORKER_ID": worker_id}
        with self.worker(variant, **persistent) as worker:
            worker.kill()
            worker.wait()
        published = self.workdir / f"{worker_id}.published"
        load = self.spawn_load("bin", None, "--mode", "burst", "--count", str(a.backlog),
                               "--published-file", str(published))
        try:
            wait_for(lambda: published.exists() or load.poll() is not None, 120,
                     "the backlog to be published")
            restarted = time.monotonic()
            with self.worker(variant, **persistent):
                run = self.finish_load(kind_of("backlog", variant), "bin", load, None)
        finally:
            _stop(load)
        run["drain_s"] = run["last_answer_clock"] - restarted
        print(f"  {'':<24} answered {run['answered']} of {a.backlog} in {run['drain_s']:.1f} s "
              "after the restart", file=sys.stderr, flush=True)
        _forget_session(self.broker.port, worker_id)

    def load(self, kind: str, form: str, target: subprocess.Popen[str] | None,
             *extra: str) -> dict[str, Any]:
        return self.finish_load(kind, form, self.spawn_load(form, target, *extra), target)

    def spawn_load(self, form: str, target: subprocess.Popen[str] | None,
                   *extra: str) -> subprocess.Popen[str]:
        a = self.args
        cmd = [sys.executable, str(BENCH / "load.py"), "--port", str(self.broker.port),
               "--form", form, "--warmup", str(a.warmup), "--duration", str(a.duration),
               "--outstanding", str(a.outstanding), "--pid", f"broker={_pid(self.broker)}", *extra]
        if target is not None:
            cmd += ["--pid", f"target={target.pid}"]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish_load(self, kind: str, form: str, load: subprocess.Popen[str],
                    target: subprocess.Popen[str] | None) -> dict[str, Any]:
        """The load's report (a target started after the load is not measured: the backlog)."""
        timeout = self.args.duration + 180
        try:
            stdout, stderr = load.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            load.kill()
            raise RuntimeError(f"load.py ({kind}) did not finish in {timeout:.0f} s") from None
        if load.returncode != 0:
            raise RuntimeError(f"load.py failed ({kind}): {stderr.strip()[-2000:]}")
        run = {"kind": kind, "form": form, "round": self.round,
               "background_before": self.background, **json.loads(stdout)}
        self.runs.append(run)
        print(f"  {kind:<24} {form:<5} {_summary(run)}", file=sys.stderr, flush=True)
        return run


def host_busy() -> float:
    """CPU seconds the whole machine has spent busy (steal included)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0)
                 - getattr(t, "guest_nice", 0.0))


def wait_for(done: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _forget_session(port: int, client_id: str) -> None:
    """End a persistent session, or the broker would queue every later window for it."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    client.connect("127.0.0.1", port, clean_start=True, properties=props)
    client.loop_start()
    client.disconnect()
    client.loop_stop()


def _pid(broker: Broker) -> int:
    proc = broker._proc  # broker_util keeps the process private; its pid is all we need
    assert proc is not None
    return int(proc.pid)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _summary(run: dict[str, Any]) -> str:
    cpu = run["cpu_us_per_window"]
    text = (f"{run['rate']:8.0f} w/s  target {cpu.get('target', 0):6.1f} us/w  "
            f"broker {cpu['broker']:5.1f}  load {cpu['load']:5.1f}  others "
            f"{run['others_cores']:.2f} cores")
    if "latency_ms" in run:
        text += f"  p50 {run['latency_ms']['p50']:.2f} ms p99 {run['latency_ms']['p99']:.2f} ms"
    if "device_busy" in run:
        text += f"  busy {run['device_busy']:.2f} batch {run.get('mean_batch', 0):.1f}"
    if run["errors"]:
        text += f"  ERRORS {run['errors']}"
    if run.get("unanswered"):
        text += f"  UNANSWERED {run['unanswered']}"
    return text


# -- the schedule -------------------------------------------------------------------------------


def execute(bench: Bench, scenarios: set[str], forms: list[str]) -> None:
    a = bench.args
    variants = ["", *(name for name, _ in candidates(a))]
    if scenarios & {"ceiling", "worker"}:
        print("throughput (saturating publisher; relay and worker alternate):", file=sys.stderr)
        for rep in range(a.repeats):
            bench.round = rep
            print(f" round {rep + 1}/{a.repeats}", file=sys.stderr)
            if "ceiling" in scenarios:
                bench.settle()
                bench.load("publisher", "bin", None, "--echo")
            for form in forms:
                if "ceiling" in scenarios:
                    bench.settle()
                    with bench.relay() as relay:
                        bench.load("relay", form, relay)
                for v in variants if "worker" in scenarios else []:
                    bench.settle()
                    with bench.worker(v) as worker:
                        bench.load(kind_of("worker", v), form, worker)
    if scenarios & {"burst", "backlog"}:
        print(f"open loop ({a.burst} windows at the broker's pace; relay and worker alternate) "
              f"and restart backlog ({a.backlog} windows):", file=sys.stderr)
        burst = ("--mode", "burst", "--count", str(a.burst))
        for rep in range(a.repeats):
            bench.round = 2 * a.repeats + rep
            print(f" round {rep + 1}/{a.repeats}", file=sys.stderr)
            if "burst" in scenarios:
                bench.settle()
                with bench.relay() as relay:
                    bench.load("relay burst", "bin", relay, *burst)
                for v in variants:
                    bench.settle()
                    with bench.worker(v) as worker:
                        bench.load(kind_of("burst", v), "bin", worker, *burst)
            for v in variants if "backlog" in scenarios else []:
                bench.settle()
                bench.backlog(v)
    if scenarios & {"latency", "device"}:
        print("latency (steady publisher) and device-bound (saturating):", file=sys.stderr)
        for rep in range(a.repeats):
            bench.round = a.repeats + rep
            print(f" round {rep + 1}/{a.repeats}", file=sys.stderr)
            if "latency" in scenarios:
                for form in forms:
                    bench.settle()
                    with bench.relay() as relay:
                        bench.load("relay latency-light", form, relay, "--mode", "rate",
                                   "--rate", f"{a.light_rate:.0f}", "--latency")
            for v in variants if "latency" in scenarios else []:
                for form in forms:
                    capacity = median(bench.runs, kind_of("worker", v), form, "rate")
                    rates = [("light", a.light_rate), ("heavy", capacity * a.load_fraction)]
                    for name, rate in rates:
                        if rate != rate:  # NaN: the worker's capacity was not measured
                            continue
                        bench.settle()
                        with bench.worker(v) as worker:
                            bench.load(kind_of(f"latency-{name}", v), form, worker, "--mode",
                                       "rate", "--rate", f"{rate:.0f}", "--latency")
            for v in variants if "device" in scenarios else []:
                # A chip that takes no time: how fast this host can feed any device through
                # HailoRT (here the double, whose Python costs the host more than libhailort).
                for ms, per_frame in [(0.0, 0.0), *devices(a)]:
                    bench.settle()
                    with bench.worker(v, **bench.hailo_settings(ms, per_frame)) as worker:
                        bench.load(kind_of(f"device {ms:g}+{per_frame:g}", v), "bin", worker,
                                   "--device", f"{ms},{per_frame}")


# -- recording ----------------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.node()}, {model}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start")


def commit() -> str:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never rewrite the index

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, env=env)
        return out.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def record(title: str, details: str, text: str) -> None:
    readme = BENCH / "README.md"
    with readme.open("a") as f:
        f.write(f"\n### {title}\n\n{details}\n\n```\n{text}\n```\n")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.repeats is None:
        # Runs here spread by +-10% from one to the next: a median of 3 rounds swung the
        # throughput ratio between 0.86 and 1.03 for the same code on one afternoon.
        args.repeats = 3 if args.quick else 5
    if args.quick:
        args.duration, args.warmup = 2.0, 1.0
        args.quiet_wait, args.quiet_budget = min(args.quiet_wait, 10.0), min(args.quiet_budget, 60)
    scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    if not scenarios <= set(SCENARIOS) or not set(forms) <= {"bin", "lists"}:
        print("bench_pipeline: unknown scenario or form", file=sys.stderr)
        return 2
    started = datetime.now(timezone.utc)
    where = machine()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        workdir = Path(tmp)
        broker = start_broker((REPO / "mosquitto" / "dev.conf").read_text(), workdir / "broker")
        watch = StatusWatch(broker.port)
        bench = Bench(args, broker, watch, workdir, settle_budget=args.quiet_budget)
        try:
            execute(bench, scenarios, forms)
        finally:
            watch.close()
            broker.stop()
    title = f"{started:%Y-%m-%d %H:%M} UTC, commit {commit()}"
    details = (f"{where}; medians of {args.repeats} rounds x {args.duration:g} s "
               f"(+{args.warmup:g} s warm-up); {args.outstanding} windows outstanding when "
               f"saturating; {(datetime.now(timezone.utc) - started).total_seconds():.0f} s "
               f"in all; `{' '.join(['bench_pipeline.py', *(argv or sys.argv[1:])])}`")
    header = f"{title}\n{details}"
    text = table(args, bench.runs, forms)
    print(f"\n{header}\n{text}")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "runs": bench.runs}, indent=1))
    if args.record:
        record(title, details, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
