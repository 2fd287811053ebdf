"""The worker's retained status document (CONTRACT.md, "Status") and the last will."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from worker import __version__

State = Literal["starting", "online", "degraded", "stopped", "offline"]


def iso(ts: float | None = None) -> str:
    """`ts` (default: now) as ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc).isoformat(
        timespec="milliseconds")


def will_payload(worker_id: str) -> bytes:
    return json.dumps({"state": "offline", "worker_id": worker_id}).encode()


@dataclass
class Status:
    """What the worker says about itself. Counters are owned here; reads are thread-safe."""

    worker_id: str
    mode: str
    model: str
    hef_sha256: str | None = None
    state: State = "starting"
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    windows_total: int = 0
    errors_total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, state: State, *, mode: str | None = None, model: str | None = None,
            detail: str | None = None) -> bool:
        """Change state; returns True when anything visible changed (publish it at once)."""
        with self._lock:
            new = (state, mode or self.mode, model or self.model, detail)
            old = (self.state, self.mode, self.model, self.detail)
            self.state, self.mode, self.model, self.detail = new
            return new != old

    def count(self, windows: int = 0, errors: int = 0) -> None:
        with self._lock:
            self.windows_total += windows
            self.errors_total += errors

    def document(self, queue_depth: int, backpressure: bool = False) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            doc: dict[str, Any] = {
                "state": self.state,
                "worker_id": self.worker_id,
                "mode": self.mode,
                "model": self.model,
                "version": __version__,
                "started_at": iso(self.started),
                "updated_at": iso(now),
                "uptime_s": round(now - self.started, 3),
                "windows_total": self.windows_total,
                "errors_total": self.errors_total,
                "queue_depth": queue_depth,
                "backpressure": backpressure,
            }
            if self.hef_sha256:
                doc["hef_sha256"] = self.hef_sha256
            if self.detail:
                doc["detail"] = self.detail
            doc.update(self.extra)
        return doc
