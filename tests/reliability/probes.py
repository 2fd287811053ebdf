"""Watching from outside: a process's memory and descriptors, and the bridge's /infer."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
import psutil

MiB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    t: float
    rss: int
    fds: int


@dataclass
class Sampler:
    """Samples a pid's RSS and descriptor count every `interval_s` in a background thread."""

    pid: int
    interval_s: float = 0.2
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._proc = psutil.Process(self.pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sampler-{self.pid}",
                                        daemon=True)

    def take(self) -> Sample | None:
        try:
            with self._proc.oneshot():
                s = Sample(time.monotonic(), self._proc.memory_info().rss, self._proc.num_fds())
        except psutil.Error:  # the process is gone (a kill test)
            return None
        self.samples.append(s)
        return s

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.take()
            self._stop.wait(self.interval_s)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> Sampler:
        self._stop.set()
        self._thread.join(5)
        return self

    def rss_mib(self, start: float, end: float) -> list[float]:
        """RSS in MiB of the samples taken in [start, end) as fractions of the run (0..1)."""
        n = len(self.samples)
        return [s.rss / MiB for s in self.samples[int(n * start):max(int(n * end), 1)]]

    def describe(self) -> str:
        if not self.samples:
            return "no samples"
        first, last = self.samples[0], self.samples[-1]
        peak = max(s.rss for s in self.samples)
        return (f"RSS {first.rss / MiB:.1f} -> {last.rss / MiB:.1f} MiB (peak {peak / MiB:.1f}), "
                f"fds {first.fds} -> {last.fds} over {last.t - first.t:.0f} s, "
                f"{len(self.samples)} samples")


def metric(text: str, name: str) -> float | None:
    """One unlabelled sample from a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


SEED_BODY = {"x": [[0.0] * 9 for _ in range(100)]}


class HttpProbe:
    """POSTs the seed's /infer body to the bridge every `interval_s` and keeps (time, status)."""

    def __init__(self, url: str, interval_s: float = 0.1) -> None:
        self.url = url
        self.interval_s = interval_s
        self.seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.wait(self.interval_s):
                try:
                    code = http.post(f"{self.url}/infer", json=SEED_BODY).status_code
                except httpx.HTTPError:
                    code = 0
                self.seen.append((time.monotonic(), code))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def first_ok_after(self, t: float) -> float | None:
        return next((at for at, code in self.seen if at > t and code == 200), None)
