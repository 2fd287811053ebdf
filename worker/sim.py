"""`hailo-sim`: N simulated IMU sensors publishing windows at a steady rate.

Each sensor is a body doing one activity (walking, running, cycling, resting...): gravity
plus motion on the accelerometer, matching rotation on the gyroscope and a slowly turning
magnetometer, with sensor noise. It also listens for the answers to its own windows and
prints one progress line a second (sent, results, errors, latency percentiles).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from types import FrameType
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from worker.logs import configure
from worker.mqtt_link import MqttLink, properties
from worker.settings import SimSettings, load_or_exit
from worker.wire import decode, encode_window

PROG = "hailo-sim"
SAMPLE_HZ = 50.0
ACTIVITIES = {  # name: (step frequency Hz, acceleration amplitude m/s^2, rotation rad/s)
    "resting": (0.2, 0.05, 0.02),
    "walking": (1.9, 2.5, 0.8),
    "running": (2.8, 7.0, 1.8),
    "cycling": (1.3, 1.5, 0.5),
    "climbing": (1.5, 3.5, 1.0),
}


class Sensor:
    """One simulated IMU: consecutive 100-step windows of a continuous signal."""

    def __init__(self, sensor_id: str, rng: np.random.Generator, length: int, channels: int):
        self.sensor_id = sensor_id
        self.rng = rng
        self.length, self.channels = length, channels
        self.activity = str(rng.choice(list(ACTIVITIES)))
        self.phase = float(rng.uniform(0, 2 * np.pi))
        self.heading = float(rng.uniform(0, 2 * np.pi))
        self.t = 0.0

    def next_window(self) -> np.ndarray:
        freq, acc, rot = ACTIVITIES[self.activity]
        t = self.t + np.arange(self.length) / SAMPLE_HZ
        self.t = float(t[-1]) + 1 / SAMPLE_HZ
        w = 2 * np.pi * freq * t + self.phase
        noise = self.rng.normal(0, 0.05, (self.length, 9))
        heading = self.heading + 0.05 * t
        cols = [
            acc * np.sin(w), acc * 0.5 * np.sin(2 * w), 9.81 + acc * 0.8 * np.cos(w),
            rot * np.cos(w), rot * 0.3 * np.sin(w), rot * 0.2 * np.sin(0.5 * w),
            30 * np.cos(heading), 30 * np.sin(heading), np.full_like(t, -40.0),
        ]
        x = np.stack(cols, axis=1) + noise
        out = np.zeros((self.length, self.channels), np.float32)
        k = min(9, self.channels)
        out[:, :k] = x[:, :k]
        return out


class Tally:
    """Answers to this simulator's windows, matched by (sensor, seq)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[tuple[str, int], float] = {}
        self.results = 0
        self.errors = 0
        self.latencies: list[float] = []

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = decode(msg.payload)
            key = (str(doc["sensor_id"]), int(doc["seq"]))
        except Exception:  # another producer's answer, or one without seq: not ours
            return
        now = time.monotonic()
        with self.lock:
            sent_at = self.sent.pop(key, None)
            if sent_at is None:
                return
            if "error" in doc:
                self.errors += 1
            else:
                self.results += 1
                self.latencies.append(now - sent_at)

    def line(self, sent: int, elapsed: float, link_error: str = "") -> str:
        with self.lock:
            lat = sorted(self.latencies[-5000:])
            results, errors, waiting = self.results, self.errors, len(self.sent)
        pct = ""
        if lat:
            p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            pct = f", latency p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms"
        down = f"; DISCONNECTED ({link_error}), windows wait to be sent" if link_error else ""
        return (f"[{elapsed:6.1f}s] sent {sent}, results {results}, errors {errors}, "
                f"waiting {waiting}{pct}{down}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Publish IMU windows from N simulated sensors to imu/<sensor>/window and "
        "report the answers. Broker settings come from MQTT_* environment variables.",
    )
    p.add_argument("--sensors", type=int, default=3, help="number of sensors (default 3)")
    p.add_argument("--rate", type=float, default=2.0,
                   help="windows per second per sensor (default 2)")
    p.add_argument("--duration", type=float, default=0,
                   help="seconds to run; 0 runs until Ctrl-C (default)")
    p.add_argument("--count", type=int, default=0,
                   help="stop after this many windows per sensor (default: no limit)")
    p.add_argument("--form", choices=["bin", "lists", "json"], default="bin",
                   help="window encoding: compact msgpack bin, msgpack lists, or JSON")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1)
    p.add_argument("--expiry", type=int, default=0, metavar="S",
                   help="MQTT v5 Message Expiry Interval of each window, in seconds: the broker "
                   "drops a window not delivered in time, the worker answers one that waited "
                   "too long `overloaded` (default 0: never expires)")
    p.add_argument("--prefix", default="sim", help="sensor ids are <prefix>-<n>")
    p.add_argument("--window-length", type=int, default=100)
    p.add_argument("--channels", type=int, default=9)
    p.add_argument("--seed", type=int, default=None, help="fixed seed for repeatable signals")
    p.add_argument("--quiet", action="store_true", help="only the final summary line")
    return p


def encode_form(x: np.ndarray, seq: int, ts: float, form: str) -> bytes:
    if form == "json":
        import json

        return json.dumps({"x": x.tolist(), "seq": seq, "ts": ts}).encode()
    return encode_window(x, seq=seq, ts=ts, compact=form == "bin")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.sensors < 1 or args.rate <= 0 or not 0 <= args.expiry < 2**32:
        print(f"{PROG}: --sensors must be >= 1, --rate > 0 and --expiry >= 0", file=sys.stderr)
        return 2
    settings = load_or_exit(SimSettings, PROG)
    configure(settings.log_level, settings.log_format)
    rng = np.random.default_rng(args.seed)
    sensors = [Sensor(f"{args.prefix}-{i}", rng, args.window_length, args.channels)
               for i in range(args.sensors)]
    tally = Tally()
    link = MqttLink(
        settings,
        client_id=f"{PROG}-{uuid.uuid4().hex[:8]}",
        subscriptions=[(f"infer/{s.sensor_id}/+", 1) for s in sensors],
        on_message=tally.on_message,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    link.start()
    if not link.wait_connected(10):
        print(f"{PROG}: cannot reach the broker at {settings.mqtt_host}:{settings.mqtt_port} "
              f"({link.last_error})", file=sys.stderr)
        link.stop()
        return 1
    print(f"{PROG}: {len(sensors)} sensors ({', '.join(s.activity for s in sensors)}) at "
          f"{args.rate:g} windows/s each, {args.form} form, QoS {args.qos}", file=sys.stderr)

    props = properties(expiry_s=args.expiry) if args.expiry else None
    interval = 1.0 / (args.rate * len(sensors))
    started = time.monotonic()
    next_at, next_report, sent, seq = started, started + 1.0, 0, 0
    while not stop.is_set():
        now = time.monotonic()
        if args.duration and now - started >= args.duration:
            break
        if args.count and seq >= args.count:
            break
        if now < next_at:
            stop.wait(min(next_at - now, 0.05))
            continue
        sensor = sensors[sent % len(sensors)]
        payload = encode_form(sensor.next_window(), seq, time.time(), args.form)
        with tally.lock:
            tally.sent[(sensor.sensor_id, seq)] = time.monotonic()
        link.publish(f"imu/{sensor.sensor_id}/window", payload, qos=args.qos, props=props)
        sent += 1
        if sent % len(sensors) == 0:
            seq += 1
        next_at += interval
        if not args.quiet and now >= next_report:
            down = "" if link.connected.is_set() else link.last_error or "not connected"
            print(tally.line(sent, now - started, down), file=sys.stderr, flush=True)
            next_report += 1.0
    # Give the last answers a moment to arrive before the summary.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and tally.sent:
        time.sleep(0.05)
    print(tally.line(sent, time.monotonic() - started), file=sys.stderr, flush=True)
    link.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
