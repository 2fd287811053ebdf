"""Throughput and host CPU cost of the `cpu` backend at batch sizes 1, 8 and 32.

    python bench/bench_cpu.py [--onnx PATH] [--threads N] [--seconds S] [--repeats R]

Each (batch size) runs R timed repetitions of about S seconds each, after a warm-up, and reports
the medians: windows/s by the wall clock, and host CPU time per window (time.process_time, all
threads of this process), which is what the inference steals from the MQTT loop.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from worker.backends.cpu import INTRA_OP_THREADS, CpuBackend
from worker.settings import REFERENCE_ONNX, WorkerSettings

BATCH_SIZES = (1, 8, 32)


def run_once(backend: CpuBackend, windows: np.ndarray, seconds: float) -> tuple[float, float]:
    """(windows per second, CPU seconds per window) over about `seconds` of back-to-back batches."""
    done = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while True:
        backend.infer(windows)
        done += len(windows)
        wall = time.perf_counter() - wall0
        if wall >= seconds:
            break
    cpu = time.process_time() - cpu0
    return done / wall, cpu / done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, default=REFERENCE_ONNX)
    parser.add_argument("--threads", type=int, default=INTRA_OP_THREADS,
                        help="onnxruntime intra-op threads (default: the backend's)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one repetition")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    cpu_name = platform.processor() or platform.machine()
    print(f"model {args.onnx.name}, {args.threads} intra-op thread(s), {cpu_name},"
          f" medians of {args.repeats} x {args.seconds:g} s")
    print(f"{'batch':>5}  {'windows/s':>10}  {'CPU us/window':>13}  {'batch latency ms':>16}")
    for batch in BATCH_SIZES:
        settings = WorkerSettings(infer_mode="cpu", onnx_path=args.onnx, batch_max_size=batch)
        backend = CpuBackend(settings, threads=args.threads)
        windows = rng.standard_normal(
            (batch, settings.window_length, settings.channels)).astype(np.float32)
        run_once(backend, windows, min(0.3, args.seconds))  # warm-up: allocations, caches
        runs = [run_once(backend, windows, args.seconds) for _ in range(args.repeats)]
        rate = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"{batch:>5}  {rate:>10.0f}  {cpu * 1e6:>13.1f}  {batch / rate * 1e3:>16.3f}")
        backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
