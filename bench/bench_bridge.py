"""Throughput and latency of the bridge's /infer against the stub worker, and what the bridge adds.

    python bench/bench_bridge.py [--seconds S] [--clients 1 16] [--warmup S]

Starts its own Mosquitto (mosquitto/dev.conf on a free loopback port), a stub worker and the
bridge, then for each number of concurrent clients runs, one after the other:

- `mqtt`: closed-loop request/response straight to the worker, as the bridge itself does it
  (compact window to imu/bench/window, v5 ResponseTopic + CorrelationData, one paho client);
- `http`: closed-loop POST /infer with the seed-shaped JSON body, one keep-alive connection
  per client (http.client, threads).

Reports requests/s and p50/p99 latency for each, and the bridge's added latency (http minus
mqtt, at the same number of clients). Everything shares this machine's cores: the figures
include the load generator's own cost.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker.wire import decode, encode_window  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def services(workdir: Path, worker_env: dict[str, str]) -> Iterator[tuple[int, str, int]]:
    """Mosquitto, a stub worker and the bridge; yields (mqtt port, bridge URL, bridge pid)."""
    mqtt_port, http_port = free_port(), free_port()
    while http_port == mqtt_port:  # the OS may hand out the same free port twice
        http_port = free_port()
    conf = re.sub(r"^listener \d+.*$", f"listener {mqtt_port} 127.0.0.1",
                  (ROOT / "mosquitto" / "dev.conf").read_text(), flags=re.M)
    (workdir / "mosquitto.conf").write_text(conf + "\nuser root\n")
    env = {**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(mqtt_port),
           "LOG_LEVEL": "WARNING"}
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, argv: list[str], extra: dict[str, str]) -> None:
        with open(workdir / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen(argv, env={**env, **extra}, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=ROOT))

    try:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        spawn("mosquitto", [mosquitto, "-c", str(workdir / "mosquitto.conf")], {})
        wait_for(lambda: _listens(mqtt_port), 10, "mosquitto")
        spawn("worker", [sys.executable, "-m", "worker"],
              {"INFER_MODE": "stub", "WORKER_ID": "bench-worker", "METRICS_PORT": "0",
               **worker_env})
        spawn("bridge", [sys.executable, "-m", "worker.bridge.cli"],
              {"BRIDGE_HOST": "127.0.0.1", "BRIDGE_PORT": str(http_port)})
        url = f"http://127.0.0.1:{http_port}"
        wait_for(lambda: _healthy(http_port), 30, "the bridge to report a worker online")
        yield mqtt_port, url, procs[-1].pid
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


@dataclass
class Run:
    path: str
    clients: int
    latencies: list[float]
    elapsed: float
    failures: int

    def row(self) -> str:
        lat = np.array(self.latencies) * 1000
        p50, p99 = (np.percentile(lat, [50, 99]) if len(lat) else (float("nan"),) * 2)
        return (f"{self.path:<5} {self.clients:>7} {len(lat) / self.elapsed:>9.0f} "
                f"{p50:>8.2f} {p99:>8.2f} {self.failures:>8}")

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies, 50) * 1000)


def closed_loop(clients: int, seconds: float, warmup: float,
                one: Callable[[int], Callable[[], bool]]) -> tuple[list[float], float, int]:
    """Run `clients` threads, each calling its request function back to back."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    start = time.perf_counter() + warmup
    stop = start + seconds

    def client(i: int) -> None:
        request = one(i)
        mine: list[float] = []
        bad = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= stop:
                break
            ok = request()
            t1 = time.perf_counter()
            if t0 >= start:  # only what began after the warm-up counts
                mine.append(t1 - t0)
                bad += not ok
        with lock:
            latencies.extend(mine)
            failures[0] += bad

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, seconds, failures[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_run(url: str, clients: int, seconds: float, warmup: float) -> Run:
    host, port = url.removeprefix("http://").split(":")
    rng = np.random.default_rng(1)
    bodies = [json.dumps({"x": rng.standard_normal((100, 9)).astype(np.float32).tolist()})
              for _ in range(clients)]

    def one(i: int) -> Callable[[], bool]:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = {"Content-Type": "application/json"}

        def request() -> bool:
            conn.request("POST", "/infer", bodies[i], headers)
            response = conn.getresponse()
            response.read()
            return response.status == 200

        return request

    return Run("http", clients, *closed_loop(clients, seconds, warmup, one))


class MqttRequester:
    """Request/response straight to the worker, the way the bridge does it."""

    def __init__(self, port: int) -> None:
        self.client_id = f"bench-{uuid.uuid4().hex[:6]}"
        self.reply_topic = f"reply/{self.client_id}/infer"
        self.waiting: dict[bytes, tuple[threading.Event, list[Any]]] = {}
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"reply/{self.client_id}/#", 1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = lambda c, u, s: s.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.max_inflight_messages_set(200)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(5):
            raise SystemExit("bench: could not subscribe to the reply topic")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        entry = self.waiting.pop(msg.properties.CorrelationData, None)
        if entry is not None:
            entry[1].append(msg.payload)
            entry[0].set()

    def request(self, payload: bytes) -> bool:
        correlation = os.urandom(16)
        done: tuple[threading.Event, list[Any]] = (threading.Event(), [])
        self.waiting[correlation] = done
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = correlation
        self.client.publish("imu/bench/window", payload, qos=1, properties=props)
        if not done[0].wait(10):
            self.waiting.pop(correlation, None)
            return False
        return "latent" in decode(done[1][0])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_run(port: int, clients: int, seconds: float, warmup: float) -> Run:
    rng = np.random.default_rng(2)
    payloads = [encode_window(rng.standard_normal((100, 9)).astype(np.float32))
                for _ in range(clients)]
    requester = MqttRequester(port)
    try:
        return Run("mqtt", clients, *closed_loop(
            clients, seconds, warmup, lambda i: lambda: requester.request(payloads[i])))
    finally:
        requester.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time per run")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--batch-max-wait-ms", type=float,
                        help="the worker's BATCH_MAX_WAIT_MS (default: its own, 5): a lone "
                        "window waits this long for company, in both paths alike")
    args = parser.parse_args(argv)
    worker_env = {}
    if args.batch_max_wait_ms is not None:
        worker_env["BATCH_MAX_WAIT_MS"] = str(args.batch_max_wait_ms)

    with (tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp,
          services(Path(tmp), worker_env) as (mqtt_port, url, bridge_pid)):
        wait = worker_env.get("BATCH_MAX_WAIT_MS", "default")
        print(f"stub worker (BATCH_MAX_WAIT_MS {wait}) + bridge + mosquitto on this machine "
              f"({os.cpu_count()} cores); {args.seconds:g} s per run after {args.warmup:g} s "
              "warm-up")
        print(f"{'path':<5} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'failures':>8}")
        added = []
        for clients in args.clients:
            direct = mqtt_run(mqtt_port, clients, args.seconds, args.warmup)
            print(direct.row(), flush=True)
            cpu0 = cpu_seconds(bridge_pid)
            bridged = http_run(url, clients, args.seconds, args.warmup)
            cpu = (cpu_seconds(bridge_pid) - cpu0) / max(1, len(bridged.latencies))
            # The warm-up's requests cost CPU too: an upper bound, close at these lengths.
            print(f"{bridged.row()}   bridge CPU <= {cpu * 1e6:.0f} us/request", flush=True)
            added.append((clients, bridged.p50_ms - direct.p50_ms))
        for clients, ms in added:
            print(f"bridge's added latency at {clients} client(s): {ms:+.2f} ms (p50 http - "
                  "p50 mqtt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
