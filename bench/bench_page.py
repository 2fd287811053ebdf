"""What the live page costs the bridge: 100 sensors at 10 windows/s each (issue #13).

    python bench/bench_page.py [--seconds S] [--sensors N] [--rate R] [--pages 0 1 5]

Starts its own Mosquitto (mosquitto/dev.conf), a stub worker (summaries once a second per
sensor, the default) and the bridge, then for each number of open pages (each an `/events`
reader, as the page's script is) runs the same steady load (bench/load.py) and prints the
bridge's CPU (cores, from psutil), the events each page got, and whether the last snapshot
had every sensor at about its rate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

from broker_util import start_broker  # noqa: E402
from support import BridgeProcess, Collector, WorkerProcess  # noqa: E402


class Page(threading.Thread):
    """One open page: reads /events and keeps the last snapshot."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.events, self.last_bytes, self.last = url, 0, 0, {}
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.stream("GET", f"{self.url}/events", timeout=None) as response:
            for line in response.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith("data: "):
                    self.events += 1
                    self.last_bytes = len(line)
                    self.last = json.loads(line[6:])


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def run(bridge: BridgeProcess, port: int, pages: int, a: argparse.Namespace) -> dict[str, Any]:
    readers = [Page(bridge.url) for _ in range(pages)]
    for r in readers:
        r.start()
    assert bridge.proc is not None
    proc = psutil.Process(bridge.proc.pid)
    time.sleep(1.0)
    before, started = cpu(proc), time.monotonic()
    load = subprocess.run(
        [sys.executable, str(BENCH / "load.py"), "--port", str(port), "--mode", "rate",
         "--rate", str(a.rate), "--sensors", str(a.sensors), "--warmup", "2",
         "--duration", str(a.seconds)], capture_output=True, text=True, check=True)
    elapsed = time.monotonic() - started
    used = cpu(proc) - before
    report = json.loads(load.stdout)
    out: dict[str, Any] = {"pages": pages, "bridge_cores": used / elapsed,
                           "answered": report["answered"], "unanswered": report["unanswered"]}
    if readers:
        snap = readers[0].last
        rates = [s.get("windows_per_s", 0) for s in snap.get("sensors", [])]
        out.update(events_per_s=sum(r.events for r in readers) / len(readers) / elapsed,
                   snapshot_kb=readers[0].last_bytes / 1024, sensors_shown=len(rates),
                   rate_range=(min(rates), max(rates)) if rates else (0, 0))
    for r in readers:
        r.stop.set()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds a run (15)")
    p.add_argument("--sensors", type=int, default=100)
    p.add_argument("--rate", type=float, default=1000.0, help="windows/s in all (1000)")
    p.add_argument("--pages", type=int, nargs="+", default=[0, 1, 5])
    a = p.parse_args(argv)
    lines = [f"{a.sensors} sensors, {a.rate:g} windows/s in all, {a.seconds:g} s a run:"]
    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        work = Path(tmp)
        broker = start_broker((REPO / "mosquitto" / "dev.conf").read_text(), work / "broker")
        worker = WorkerProcess(broker.port, worker_id="bench-page", log_dir=work).start()
        bridge = BridgeProcess(broker.port, log_dir=work).start()
        watch = Collector(broker.port, topics=("hailo/+/status",))
        try:
            watch.wait_state("bench-page", "online")
            for pages in a.pages:
                r = run(bridge, broker.port, pages, a)
                line = (f"  {pages} page(s): bridge {r['bridge_cores'] * 100:.1f}% of a core; "
                        f"{r['answered']} windows answered, {r['unanswered']} not")
                if pages:
                    lo, hi = r["rate_range"]
                    line += (f"; {r['events_per_s']:.2f} events/s a page of "
                             f"{r['snapshot_kb']:.0f} KiB, {r['sensors_shown']} sensors shown "
                             f"at {lo:.1f}-{hi:.1f} windows/s")
                print(line, file=sys.stderr, flush=True)
                lines.append(line)
        finally:
            watch.close()
            bridge.kill()
            worker.kill()
            broker.stop()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
