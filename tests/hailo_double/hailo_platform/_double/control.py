"""How a test steers the double, in this process or from another one.

Environment (read on every call, so a test may change it between calls):
  HAILO_DOUBLE_CONTROL       path of a JSON control file (missing file = no faults)
  HAILO_DOUBLE_LATENCY_MS    device time per job (default 1.0)
  HAILO_DOUBLE_PER_FRAME_MS  extra device time per frame in the job (default 0.1)
  HAILO_DOUBLE_LOG           path of a JSON-lines event log (appended, one object a line)
  HAILO_DOUBLE_COMPUTE       1 (default): the chip runs the model; 0: it answers zeros, so the
                             host CPU of its onnxruntime (which a real chip does not take) stays
                             out of host benchmarks (bench/bench_pipeline.py)
  HAILO_DOUBLE_DEVICE_LOCK   path of a lock file standing for /dev/hailo0: when set, only one
                             VDevice at a time (any process) may hold the device

The control file is re-read whenever it changes (write it atomically: `write_control`).
The `*_next_n` counters are consumed in memory, per process; writing the file with
different content (bump `seq`) arms them again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIELDS = ("seq", "open_fails", "open_hangs", "device_lost", "hang", "timeouts_next_n",
          "fail_next_n", "latency_ms", "per_frame_ms", "temperature_c", "arch", "async_queue_size")

# In-process record of what reached the "device" (also written to HAILO_DOUBLE_LOG).
events: deque[dict[str, Any]] = deque(maxlen=100_000)


@dataclass(frozen=True)
class Faults:
    open_fails: bool = False
    open_hangs: bool = False
    device_lost: str | None = None  # None, "driver" or "closed"
    hang: bool = False
    latency_ms: float = 1.0
    per_frame_ms: float = 0.1
    temperature_c: float = 45.0
    arch: str = "HAILO8"
    async_queue_size: int | None = None


_NO_FAULTS: dict[str, Any] = {}  # no control file (shared, never changed)


class _Control:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, int, int, int] | None = None
        self._doc: dict[str, Any] = _NO_FAULTS
        self._used: dict[str, int] = {}
        # The last answer of faults(), by what it was made from. HailoRT does its bookkeeping
        # in C++; rebuilding this for every call made the double's own Python a sizeable
        # share of the host CPU in device benchmarks.
        self._made: tuple[dict[str, Any], tuple[str | None, str | None], Faults] | None = None

    def _load(self) -> dict[str, Any]:
        path = os.environ.get("HAILO_DOUBLE_CONTROL")
        if not path:
            self._key, self._doc, self._used = None, _NO_FAULTS, {}
            return self._doc
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._key, self._doc, self._used = None, _NO_FAULTS, {}
            return self._doc
        key = (path, st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            text = Path(path).read_text()
            try:
                doc = json.loads(text) if text.strip() else {}
            except json.JSONDecodeError:
                return self._doc  # caught mid-write (not atomic): keep the last good one
            unknown = set(doc) - set(FIELDS)
            if unknown:
                raise ValueError(f"HAILO_DOUBLE_CONTROL {path}: unknown fields {sorted(unknown)}")
            if doc != self._doc:
                self._used = {}
            self._key, self._doc = key, doc
        return self._doc

    def faults(self) -> Faults:
        env = (os.environ.get("HAILO_DOUBLE_LATENCY_MS"),
               os.environ.get("HAILO_DOUBLE_PER_FRAME_MS"))
        with self._lock:
            doc = self._load()
            made = self._made
        if made is not None and made[0] is doc and made[1] == env:
            return made[2]
        faults = self._make(doc, env)
        with self._lock:
            self._made = (doc, env, faults)
        return faults

    @staticmethod
    def _make(doc: dict[str, Any], env: tuple[str | None, str | None]) -> Faults:
        lost = doc.get("device_lost")
        if lost is True:
            lost = "driver"
        if lost not in (None, False, "driver", "closed"):
            raise ValueError(f"device_lost must be false, true, 'driver' or 'closed': {lost!r}")
        queue = doc.get("async_queue_size")
        return Faults(
            open_fails=bool(doc.get("open_fails", False)),
            open_hangs=bool(doc.get("open_hangs", False)),
            device_lost=lost or None,
            hang=bool(doc.get("hang", False)),
            latency_ms=float(doc.get("latency_ms", env[0] or 1.0)),
            per_frame_ms=float(doc.get("per_frame_ms", env[1] or 0.1)),
            temperature_c=float(doc.get("temperature_c", 45.0)),
            arch=str(doc.get("arch", "HAILO8")),
            async_queue_size=None if queue is None else int(queue),
        )

    def take(self, counter: str) -> bool:
        """Consume one unit of `timeouts_next_n` / `fail_next_n`; True if one was left."""
        with self._lock:
            doc = self._load()
            if self._used.get(counter, 0) < int(doc.get(counter, 0)):
                self._used[counter] = self._used.get(counter, 0) + 1
                return True
            return False


control = _Control()


def write_control(path: str | os.PathLike[str], **fields: Any) -> None:
    """Replace the control file atomically (the reader never sees half a file)."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown control fields {sorted(unknown)}")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, target)


def record(event: str, **data: Any) -> None:
    entry = {"event": event, "pid": os.getpid(), "t": time.time(), **data}
    events.append(entry)
    log = os.environ.get("HAILO_DOUBLE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events another process wrote to HAILO_DOUBLE_LOG."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def computes() -> bool:
    """Whether the chip runs the model (HAILO_DOUBLE_COMPUTE, default 1)."""
    return os.environ.get("HAILO_DOUBLE_COMPUTE", "1") != "0"
