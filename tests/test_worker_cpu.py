"""The real worker in INFER_MODE=cpu answers what onnxruntime gives on the committed model."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest
from schema_util import validate
from support import Collector, WorkerProcess

from worker.settings import REFERENCE_ONNX
from worker.wire import encode_window

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture(scope="module")
def reference() -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    session = ort.InferenceSession(str(REFERENCE_ONNX), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        latent, motifs = session.run(["latent", "motif_scores"], {"x": x[None]})
        return latent[0], motifs[0]

    return run


def test_cpu_results_equal_onnxruntime_for_every_batch_size(
    start_worker: StartWorker, collector: Collector,
    reference: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> None:
    w = start_worker(infer_mode="cpu", batch_max_size=8, batch_max_wait_ms=200)
    status = collector.wait_state(w.worker_id, "online")
    assert status["mode"] == "cpu" and status["model"] == "tcn_encoder-v0.1.0"
    rng = np.random.default_rng(11)
    windows: dict[int, np.ndarray] = {}
    seq = 0
    # Bursts of 1..8 windows: the long batch wait makes each burst ride as one batch.
    for size in range(1, 9):
        collector.clear()
        for _ in range(size):
            windows[seq] = rng.standard_normal((100, 9)).astype(np.float32) * 3
            collector.client.publish("imu/cpu/window", encode_window(windows[seq], seq=seq), qos=1)
            seq += 1
        answers = collector.wait_answers(size)
        sizes = {m.doc()["batch_size"] for m in answers}
        assert sizes == {size}, f"burst of {size} rode in batches {sizes}"
        for m in answers:
            doc = m.doc()
            validate("result", doc)
            latent, motifs = reference(windows[doc["seq"]])
            np.testing.assert_allclose(doc["latent"], latent, atol=1e-5, rtol=0)
            np.testing.assert_allclose(doc["motif_scores"], motifs, atol=1e-5, rtol=0)
            assert doc["model"] == "tcn_encoder-v0.1.0"
