"""The double's chip: runs the HEF's ONNX model on the CPU, one job at a time, on its own thread.

A job is what one `run_async` call submitted: a list of frames (one per Bindings). Its fate
is decided at submission from the control file: "ok" (computed after the configured
latency), "fail" (completes with a driver error, reported only through the callback, as
HailoRT does), or "hang" (never completes; `job.wait` times out). After a failed job the
pipeline is shut down, as HailoRT's is, and later calls raise HailoRTStreamAborted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import onnxruntime as ort

from hailo_platform._double.control import computes, control, record
from hailo_platform._double.hef_format import HefSpec
from hailo_platform.pyhailort._common import HailoRTException, status_error

log = logging.getLogger("hailo_platform.double")


@lru_cache(maxsize=8)
def _session(onnx_path: str, mtime_ns: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])


def lost_error(kind: str) -> HailoRTException:
    if kind == "closed":
        return status_error("HAILO_COMMUNICATION_CLOSED", "device connection closed (double)")
    return status_error("HAILO_DRIVER_OPERATION_FAILED", "device lost (double)")


@dataclass
class OutputCopy:
    """HailoRT's Python wrapper hands the chip a DMA-able buffer per output and copies it
    into whatever the Bindings pointed at when `run_async` was called."""

    stream: str
    aligned: np.ndarray
    target: np.ndarray


@dataclass
class Frame:
    inputs: dict[str, np.ndarray]
    outputs: list[OutputCopy]


@dataclass
class Job:
    frames: list[Frame]
    callback: Callable[[HailoRTException | None], None]
    fate: str
    done: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)


class Chip:
    def __init__(self, spec: HefSpec) -> None:
        import os

        self.spec = spec
        self.session = _session(spec.onnx, os.stat(spec.onnx).st_mtime_ns)
        in_meta = {i.name: i for i in self.session.get_inputs()}
        self._in = spec.inputs[0]
        tail = in_meta[self._in.onnx_name].shape[1:]
        if all(isinstance(d, int) for d in tail):
            self._onnx_tail: tuple[int, ...] = tuple(tail)
        else:
            self._onnx_tail = self._in.shape
        self._onnx_outputs = [s.onnx_name for s in spec.outputs]
        self.inflight = 0
        self.aborted: HailoRTException | None = None
        # When the chip is done with the jobs it has: it runs on its own clock, so a job queued
        # behind another starts the moment that one ends, however late this thread gets
        # Python's GIL. Only the completion callback waits for the host, as on HailoRT.
        self._free_at = 0.0
        self._cond = threading.Condition()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._hung: list[Job] = []
        self._thread = threading.Thread(target=self._loop, name="hailo-double-chip", daemon=True)
        self._thread.start()

    def wait_ready(self, frames: int, capacity: int, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: self.aborted is not None or self.inflight + frames <= capacity, timeout_s)

    def submit(self, job: Job) -> None:
        with self._cond:
            self.inflight += len(job.frames)
            if job.fate == "hang":
                self._hung.append(job)
                return
        self._queue.put(job)

    def shutdown(self) -> None:
        """Abort everything pending (callbacks get HailoRTStreamAborted) and stop the thread."""
        with self._cond:
            if self.aborted is None:
                self.aborted = status_error("HAILO_STREAM_ABORT", "shutdown")
            hung, self._hung = self._hung, []
        for job in hung:
            self._finish(job, status_error("HAILO_STREAM_ABORT", "shutdown"))
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(10)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if self.aborted is not None:
                self._finish(job, status_error("HAILO_STREAM_ABORT", "pipeline shut down"))
                continue
            picked = time.monotonic()
            started = max(job.submitted, self._free_at)
            faults = control.faults()
            error: HailoRTException | None = None
            if faults.device_lost:
                error = lost_error(faults.device_lost)
            elif job.fate == "fail":
                error = status_error("HAILO_DRIVER_OPERATION_FAILED", "injected job failure")
            elif not computes():
                for frame in job.frames:
                    for out in frame.outputs:
                        out.aligned[...] = 0
            else:
                try:
                    self._compute(job)
                except Exception as exc:  # a double bug must surface, not hang the test
                    log.exception("double failed to compute a job")
                    error = status_error("HAILO_INVALID_OPERATION", f"double: {exc!r}")
            if error is None:
                busy = (faults.latency_ms + faults.per_frame_ms * len(job.frames)) / 1000
                # A model slower than the latency asked for makes a slower chip.
                self._free_at = started + max(busy, time.monotonic() - picked)
                time.sleep(max(0.0, self._free_at - time.monotonic()))
                for frame in job.frames:
                    for out in frame.outputs:
                        np.copyto(out.target, out.aligned)
            else:
                with self._cond:
                    self.aborted = error
            self._finish(job, error)

    def _compute(self, job: Job) -> None:
        n = len(job.frames)
        x = np.stack([f.inputs[self._in.name] for f in job.frames])
        x = np.ascontiguousarray(x.reshape((n, *self._onnx_tail)), dtype=np.float32)
        results: list[Any] = self.session.run(self._onnx_outputs, {self._in.onnx_name: x})
        by_stream = {s.name: r for s, r in zip(self.spec.outputs, results, strict=True)}
        for i, frame in enumerate(job.frames):
            for out in frame.outputs:
                out.aligned[...] = np.asarray(by_stream[out.stream][i]).reshape(out.aligned.shape)

    def _finish(self, job: Job, error: HailoRTException | None) -> None:
        record("job_done", frames=len(job.frames), ok=error is None,
               error=None if error is None else type(error).__name__)
        try:
            job.callback(error)
        except Exception:
            log.exception("run_async callback raised")
        with self._cond:
            self.inflight -= len(job.frames)
            self._cond.notify_all()
        job.done.set()
