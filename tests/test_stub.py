"""The stub contract double: deterministic, batch- and form-independent, distinct, well-shaped."""

from __future__ import annotations

import numpy as np

from worker.backends.stub import StubBackend
from worker.settings import WorkerSettings
from worker.wire import decode_window, encode_window


def test_stub_answers_are_bit_identical_in_any_batch_and_any_form() -> None:
    stub = StubBackend(WorkerSettings(infer_mode="stub"))
    xs = np.random.default_rng(3).standard_normal((8, 100, 9)).astype(np.float32)
    lat8, mot8 = stub.infer(xs)
    for i in range(8):
        lists = decode_window(encode_window(xs[i], compact=False), 100, 9).x
        lat1, mot1 = stub.infer(lists[None])
        assert lat1.tobytes() == lat8[i].tobytes() and mot1.tobytes() == mot8[i].tobytes()
    lat_again, _ = stub.infer(xs[::-1].copy())
    assert lat_again[::-1].tobytes() == lat8.tobytes()


def test_stub_shapes_values_and_distinct_answers() -> None:
    stub = StubBackend(WorkerSettings(infer_mode="stub", latent_dim=32, num_motifs=5))
    xs = np.random.default_rng(4).standard_normal((50, 100, 9)).astype(np.float32)
    latent, motifs = stub.infer(xs)
    assert latent.shape == (50, 32) and motifs.shape == (50, 5)
    assert latent.dtype == motifs.dtype == np.float32
    assert np.isfinite(latent).all() and np.isfinite(motifs).all()
    np.testing.assert_allclose(np.linalg.norm(latent, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(motifs.sum(axis=1), 1, rtol=1e-5)
    assert len({row.tobytes() for row in latent}) == 50
