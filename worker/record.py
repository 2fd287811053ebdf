"""`hailo-record`: record real IMU windows from the broker into a calibration set.

Hailo's Dataflow Compiler quantises the model in its optimize step against a calibration set:
real inputs (about 1024 are recommended), a float32 array saved with `np.save`. This tool
subscribes to `imu/+/window`, decodes every window exactly as the worker does (msgpack bin,
msgpack lists or JSON), skips and counts the invalid ones, and saves the first N valid windows
as float32 `[N, WINDOW_LENGTH, CHANNELS]`. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import numpy as np
import paho.mqtt.client as mqtt
from pydantic import Field

from worker.backends.base import Floats
from worker.logs import configure
from worker.mqtt_link import MqttLink
from worker.settings import CommonSettings, load_or_exit
from worker.wire import WireError, decode_window

PROG = "hailo-record"
EXIT_INCOMPLETE = 1
CONNECT_WAIT_S = 10.0


class RecordSettings(CommonSettings):
    """Broker settings, plus the window shape the worker expects (the flags' defaults)."""

    window_length: int = Field(100, ge=1, le=100_000)
    channels: int = Field(9, ge=1, le=1024)


class Recording:
    """The valid windows received so far, filled on paho's network thread."""

    def __init__(self, count: int, length: int, channels: int) -> None:
        self.count, self.length, self.channels = count, length, channels
        self.lock = threading.Lock()
        self.windows: list[Floats] = []
        self.invalid: Counter[str] = Counter()
        self.full = threading.Event()

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            window = decode_window(msg.payload, self.length, self.channels)
        except WireError as exc:
            with self.lock:
                self.invalid[exc.code] += 1
            return
        with self.lock:
            if len(self.windows) < self.count:
                self.windows.append(window.x)
            if len(self.windows) >= self.count:
                self.full.set()

    def progress(self) -> tuple[int, int]:
        with self.lock:
            return len(self.windows), self.invalid.total()

    def array(self) -> Floats:
        with self.lock:
            if not self.windows:
                return np.empty((0, self.length, self.channels), np.float32)
            return np.stack(self.windows).astype(np.float32, copy=False)


class ProgressBar:
    """A one-line bar redrawn in place on a terminal; on a pipe, one line per tenth done."""

    WIDTH = 30

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream = total, stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_tenth = -1

    def update(self, done: int, invalid: int, final: bool = False) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        frac = min(done / self.total, 1.0)
        filled = int(frac * self.WIDTH)
        text = (f"{PROG}: [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{self.total} "
                f"windows, {invalid} invalid, {done / elapsed:.1f}/s, {elapsed:.0f} s")
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            tenth = int(frac * 10)
            if tenth == self.last_tenth and not final:
                return
            self.last_tenth = tenth
            self.stream.write(text + "\n")
        self.stream.flush()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Record real IMU windows from the broker (imu/+/window) into a calibration "
        "set for Hailo's optimize step: a float32 array [N, WINDOW_LENGTH, CHANNELS] saved with "
        "numpy.save. Windows are decoded as the worker decodes them; invalid ones are skipped "
        "and counted. Broker settings come from MQTT_* environment variables (or .env).",
        epilog="exit status: 0 when N windows were saved; 1 when the timeout or a signal came "
        "first (the windows received so far are saved, if any) or the broker cannot be "
        "reached; 2 for a bad setting or argument.",
    )
    p.add_argument("--count", type=int, default=1024,
                   help="number of valid windows to record (default 1024)")
    p.add_argument("--out", type=Path, default=Path("calib.npy"),
                   help="output file (default calib.npy); written atomically")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="give up after this many seconds; 0 waits forever (default 600)")
    p.add_argument("--topic", default="imu/+/window",
                   help="topic filter to record (default imu/+/window)")
    p.add_argument("--window-length", type=int, default=None,
                   help="steps per window (default WINDOW_LENGTH, else 100)")
    p.add_argument("--channels", type=int, default=None,
                   help="channels per step (default CHANNELS, else 9)")
    return p


def save(path: Path, array: Floats) -> None:
    """Write with np.save to a temporary file beside `path`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_args(args: argparse.Namespace) -> str | None:
    if args.count < 1:
        return "--count must be at least 1"
    if args.timeout < 0:
        return "--timeout must be 0 (no limit) or more"
    for flag, value in (("--window-length", args.window_length), ("--channels", args.channels)):
        if value is not None and value < 1:
            return f"{flag} must be at least 1"
    parent = args.out.parent if str(args.out.parent) else Path(".")
    if not parent.is_dir():
        return f"--out: no such directory: {parent}"
    if not os.access(parent, os.W_OK):
        return f"--out: cannot write in {parent}"
    return None


def record(args: argparse.Namespace, settings: RecordSettings) -> int:
    length = args.window_length or settings.window_length
    channels = args.channels or settings.channels
    recording = Recording(args.count, length, channels)
    subscribed = threading.Event()
    link = MqttLink(
        settings,
        client_id=f"{PROG}-{uuid.uuid4().hex[:8]}",
        subscriptions=[(args.topic, 1)],
        on_message=recording.on_message,
    )
    # The bar starts only once the broker has granted the subscription, so a caller that waits
    # for the "recording" line knows that windows published from then on are seen.
    link.client.on_subscribe = lambda *_: subscribed.set()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        recording.full.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    link.start()
    try:
        patience = min(CONNECT_WAIT_S, args.timeout) if args.timeout else CONNECT_WAIT_S
        if not (link.wait_connected(patience) and subscribed.wait(patience)):
            print(f"{PROG}: cannot subscribe at {settings.mqtt_host}:{settings.mqtt_port} "
                  f"({link.last_error or 'no SUBACK'})", file=sys.stderr)
            return EXIT_INCOMPLETE
        print(f"{PROG}: recording {args.count} windows [{length}, {channels}] from "
              f"{args.topic} at {settings.mqtt_host}:{settings.mqtt_port}", file=sys.stderr,
              flush=True)
        bar = ProgressBar(args.count, sys.stderr)
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while not recording.full.wait(0.2):
            bar.update(*recording.progress())
            if deadline is not None and time.monotonic() >= deadline:
                break
        done, invalid = recording.progress()
        bar.update(done, invalid, final=True)
    finally:
        link.stop()
    return finish(args, recording, stopped=stop.is_set())


def finish(args: argparse.Namespace, recording: Recording, stopped: bool) -> int:
    array = recording.array()
    tally = ", ".join(f"{n} {code}" for code, n in sorted(recording.invalid.items()))
    skipped = f"; skipped {recording.invalid.total()} invalid ({tally})" if tally else ""
    if len(array):
        save(args.out, array)
        print(f"{PROG}: saved {len(array)} windows, float32 {list(array.shape)}, to "
              f"{args.out}{skipped}", file=sys.stderr)
    if len(array) == args.count:
        return 0
    why = "stopped by a signal" if stopped else f"timed out after {args.timeout:g} s"
    nothing = "" if len(array) else f", nothing saved{skipped}"
    print(f"{PROG}: {why} with {len(array)} of {args.count} windows{nothing}", file=sys.stderr)
    return EXIT_INCOMPLETE


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return 2
    settings = load_or_exit(RecordSettings, PROG)
    # The bar owns stderr: only warnings and errors are logged beside it.
    configure("WARNING" if settings.log_level == "INFO" else settings.log_level,
              settings.log_format)
    return record(args, settings)


if __name__ == "__main__":
    sys.exit(main())
