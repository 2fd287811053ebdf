"""Write the example payloads in schemas/examples/ (deterministic: same bytes on every run).

    python scripts/make_examples.py            # rewrite schemas/examples/
    python scripts/make_examples.py --out DIR  # write elsewhere (the tests compare the two)

The window is a made-up second of walking sampled at 100 Hz: accelerometer (m/s^2),
gyroscope (rad/s) and magnetometer (uT), three axes each. Only `random.random()` and `math`
are used for it, since NumPy's generators promise no stable stream across versions, and
values are rounded to 4 decimals so the JSON stays readable and the float32 forms match it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # So the script runs from a plain checkout, not only after `pip install -e .`.
    sys.path.insert(0, str(ROOT))

from worker.wire import WireError, decode_window, encode_window, error_doc  # noqa: E402

SEED = 20260101
LENGTH, CHANNELS, LATENT_DIM, NUM_MOTIFS = 100, 9, 64, 12
SEQ, TS = 42, 1767225600.25
SENSOR_ID, WORKER_ID, MODEL = "demo", "edge-pi-01", "tcn_encoder"


def _noise(rng: random.Random, scale: float) -> float:
    # Triangular noise from two uniforms: random() is the one stream Python keeps stable.
    return scale * (rng.random() + rng.random() - 1.0)


def imu_rows(rng: random.Random) -> list[list[float]]:
    rows = []
    for i in range(LENGTH):
        stride = 2.0 * math.pi * 1.8 * i / LENGTH  # 1.8 steps a second
        heading = 0.15 * math.sin(stride / 2.0)
        row = [
            0.9 * math.sin(stride) + _noise(rng, 0.08),
            0.4 * math.sin(stride / 2.0 + 0.4) + _noise(rng, 0.08),
            9.81 + 1.6 * math.cos(stride + 0.2) + _noise(rng, 0.1),
            0.35 * math.sin(stride / 2.0) + _noise(rng, 0.02),
            0.8 * math.cos(stride) + _noise(rng, 0.02),
            0.1 * math.sin(stride / 2.0 + 1.0) + _noise(rng, 0.02),
            22.0 * math.cos(heading) + _noise(rng, 0.3),
            -22.0 * math.sin(heading) - 4.5 + _noise(rng, 0.3),
            -41.0 + _noise(rng, 0.3),
        ]
        rows.append([round(v, 4) for v in row])
    return rows


def window_json(rows: list[list[float]]) -> bytes:
    # One row a line: readable, and still a single argument for `mosquitto_pub -m`.
    body = ",\n".join("    " + json.dumps(row) for row in rows)
    return f'{{\n  "seq": {SEQ},\n  "ts": {TS!r},\n  "x": [\n{body}\n  ]\n}}\n'.encode()


def result_doc(rng: random.Random) -> dict[str, Any]:
    raw = [rng.random() * 2.0 - 1.0 for _ in range(LATENT_DIM)]
    norm = math.sqrt(sum(v * v for v in raw))
    logits = [4.0 * (rng.random() * 2.0 - 1.0) for _ in range(NUM_MOTIFS)]
    exps = [math.exp(v) for v in logits]
    return {
        "sensor_id": SENSOR_ID,
        "seq": SEQ,
        "ts": TS,
        "latent": [round(v / norm, 6) for v in raw],
        "motif_scores": [round(v / sum(exps), 6) for v in exps],
        "model": MODEL,
        "worker_id": WORKER_ID,
        "batch_size": 3,
        "latency_ms": 6.42,
    }


def error_example(x: np.ndarray) -> dict[str, Any]:
    """The worker's real answer to a window of 99 rows."""
    try:
        decode_window(encode_window(x[:-1], seq=SEQ + 1), LENGTH, CHANNELS)
    except WireError as exc:
        return error_doc(SENSOR_ID, exc.code, exc.detail, exc.seq)
    raise AssertionError("a 99-row window decoded")


def status_doc() -> dict[str, Any]:
    return {
        "state": "online",
        "worker_id": WORKER_ID,
        "mode": "hailo",
        "model": MODEL,
        "hef_sha256": hashlib.sha256(b"example tcn_encoder.hef").hexdigest(),
        "version": "0.1.0",
        "started_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T01:00:00.250Z",
        "uptime_s": 3600.25,
        "windows_total": 35980,
        "errors_total": 12,
        "queue_depth": 0,
        "backpressure": False,
    }


def _json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def build() -> dict[str, bytes]:
    """File name -> exact bytes."""
    rng = random.Random(SEED)
    rows = imu_rows(rng)
    x = np.asarray(rows, dtype=np.float32)
    return {
        "window.json": window_json(rows),
        "window.msgpack": encode_window(x, seq=SEQ, ts=TS),
        "window-lists.msgpack": encode_window(x, seq=SEQ, ts=TS, compact=False),
        # The seed's smoke-test body, byte for byte what its `print(json.dumps(...))` wrote.
        "window-seed-zeros.json": (json.dumps({"x": [[0.0] * 9] * 100}) + "\n").encode(),
        "result.json": _json(result_doc(rng)),
        "error.json": _json(error_example(x)),
        "status.json": _json(status_doc()),
        "status-offline.json": _json({"state": "offline", "worker_id": WORKER_ID}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "schemas" / "examples",
                        help="directory to write into (default: schemas/examples)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in build().items():
        (args.out / name).write_bytes(data)
        print(f"{args.out / name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
