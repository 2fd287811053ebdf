"""`hailo-worker` (also `python -m worker`): the inference worker's command line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

import numpy as np

from worker import __version__, backends
from worker.backends.base import InferenceError
from worker.logs import configure
from worker.settings import (
    EXIT_CONFIG,
    ConfigError,
    WorkerSettings,
    fail,
    load_or_exit,
    masked,
    settings_help,
)

PROG = "hailo-worker"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Subscribe to IMU windows over MQTT, batch them through the configured "
        "backend (INFER_MODE: hailo, cpu or stub) and publish results, errors and a retained "
        "status.",
        epilog=settings_help(WorkerSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings (secrets masked) and exit")
    p.add_argument("--check", action="store_true",
                   help="load the backend, run one window, print shapes, device and timing; "
                   "exit 0 when it works, 2 when it does not")
    p.add_argument("--ha-forget", action="store_true",
                   help="remove what HA_DISCOVERY announced to Home Assistant (this worker and "
                   "the sensors' devices) and exit; run it with the worker stopped")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def ha_forget(settings: WorkerSettings) -> int:
    from worker.ha_discovery import forget

    try:
        removed = forget(settings)
    except ConnectionError as exc:
        print(f"{PROG}: --ha-forget failed: {exc}", file=sys.stderr)
        return 1
    print(f"removed {removed} Home Assistant discovery configs under "
          f"{settings.ha_discovery_prefix}/")
    return 0


def check(settings: WorkerSettings) -> int:
    """The first thing an operator runs on a new Pi."""
    try:
        backend = backends.create(settings.infer_mode, settings)
    except ConfigError as exc:
        fail(PROG, str(exc))
    try:
        x = np.random.default_rng(0).standard_normal(
            (1, settings.window_length, settings.channels)).astype(np.float32)
        started = time.perf_counter()
        latent, motifs = backend.infer(x)
        elapsed_ms = (time.perf_counter() - started) * 1000
    except InferenceError as exc:
        print(f"{PROG}: check failed: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        info = backend.info()
        backend.close()
    print(json.dumps(info, indent=2, default=str))
    print(f"input  [1, {settings.window_length}, {settings.channels}] float32")
    print(f"output latent {list(latent.shape)}, motif_scores {list(motifs.shape)}")
    print(f"one window: {elapsed_ms:.2f} ms on {backend.mode}")
    print("check OK")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = load_or_exit(WorkerSettings, PROG)
    if args.print_config:
        print(json.dumps(masked(settings), indent=2, default=str))
        return 0
    configure(settings.log_level, settings.log_format)
    if args.check:
        return check(settings)
    if args.ha_forget:
        return ha_forget(settings)

    from worker.service import build  # keeps --help and --print-config free of heavy imports

    try:
        worker = build(settings)
    except ConfigError as exc:
        fail(PROG, str(exc))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("worker").info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return worker.run(stop)
    except ConfigError as exc:  # found only once serving starts: a busy METRICS_PORT
        fail(PROG, str(exc))


if __name__ == "__main__":
    sys.exit(main())
