"""The reference encoder: reproducible export, output properties, causal convolutions."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from worker import model
from worker.settings import REFERENCE_ONNX

SUMS = REFERENCE_ONNX.parent / "sha256sum.txt"


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(REFERENCE_ONNX), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def probe() -> ort.InferenceSession:
    """The reference model with the last conv block's activations as an extra output."""
    m = onnx.load(str(REFERENCE_ONNX))
    m.graph.output.append(onnx.helper.make_tensor_value_info(model.TCN_OUT, onnx.TensorProto.FLOAT,
                                                             None))
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 100, 9)).astype(np.float32)


def test_export_reproduces_the_committed_file(tmp_path: Path) -> None:
    out = tmp_path / "fresh.onnx"
    assert model.main(["export", "--out", str(out)]) == 0
    assert out.read_bytes() == REFERENCE_ONNX.read_bytes()
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"{digest}  {REFERENCE_ONNX.name}" in SUMS.read_text().splitlines()
    assert model.verify() == []


def test_verify_catches_a_changed_file_and_a_stale_checksum(tmp_path: Path) -> None:
    changed = tmp_path / REFERENCE_ONNX.name
    data = bytearray(REFERENCE_ONNX.read_bytes())
    data[-10] ^= 0xFF
    changed.write_bytes(bytes(data))
    problems = model.verify(committed=changed, sums=SUMS)
    assert len(problems) == 2
    assert "differs from a fresh export" in problems[0]
    assert "no matching line" in problems[1]

    same = tmp_path / "same" / REFERENCE_ONNX.name
    same.parent.mkdir()
    shutil.copy(REFERENCE_ONNX, same)
    stale = tmp_path / "sums.txt"
    stale.write_text(f"{'0' * 64}  {REFERENCE_ONNX.name}\n")
    assert model.verify(committed=same, sums=stale) == [
        f"{stale}: no matching line for {REFERENCE_ONNX.name} ({model.sha256(same)})"
    ]


def test_check_prints_names_and_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    assert model.main(["check", str(REFERENCE_ONNX)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "input x: float [batch, 100, 9]",
        "output latent: float [batch, 64]",
        "output motif_scores: float [batch, 12]",
    ]


def test_graph_is_4d_with_1xk_dilated_causal_convs() -> None:
    g = onnx.load(str(REFERENCE_ONNX)).graph
    convs = [n for n in g.node if n.op_type == "Conv"]
    attrs = [{a.name: list(a.ints) for a in n.attribute} for n in convs[1:]]
    assert [a["dilations"] for a in attrs] == [[1, 1], [1, 2], [1, 4], [1, 8]]
    assert all(a["kernel_shape"] == [1, 3] for a in attrs)
    assert [a["pads"] for a in attrs] == [[0, 2 * d, 0, 0] for d in (1, 2, 4, 8)]


@pytest.mark.parametrize("n", [1, 5])
def test_output_shapes_and_types(session: ort.InferenceSession, n: int) -> None:
    latent, motifs = session.run(["latent", "motif_scores"], {"x": windows(n)})
    assert latent.shape == (n, 64) and latent.dtype == np.float32
    assert motifs.shape == (n, 12) and motifs.dtype == np.float32


@pytest.mark.parametrize("scale", [0.0, 1e-3, 1.0, 50.0])
def test_latent_is_unit_length_and_scores_a_distribution(
    session: ort.InferenceSession, scale: float
) -> None:
    latent, motifs = session.run(None, {"x": windows(6) * np.float32(scale)})
    np.testing.assert_allclose(np.linalg.norm(latent, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(motifs.sum(axis=1), 1.0, atol=1e-5)
    assert (motifs >= 0).all()


def test_outputs_vary_with_input(session: ort.InferenceSession) -> None:
    latent, motifs = session.run(None, {"x": windows(8)})
    distances = np.linalg.norm(latent[:, None] - latent[None], axis=2)[np.triu_indices(8, 1)]
    assert distances.min() > 1e-2
    assert np.abs(motifs[:, None] - motifs[None]).max(axis=2)[np.triu_indices(8, 1)].min() > 1e-3
    # not a near-uniform head: an untrained model should still rank motifs
    assert motifs.max(axis=1).min() > 2.0 / 12


def test_convolutions_are_causal_with_a_31_step_receptive_field(
    probe: ort.InferenceSession,
) -> None:
    base = windows(1, seed=3)

    def activations(x: np.ndarray) -> np.ndarray:
        out = probe.run([model.TCN_OUT], {"x": x})[0]
        assert out.shape == (1, 32, 1, 100)
        return np.asarray(out[0, :, 0, :])  # [channels, time]

    ref = activations(base)
    late = base.copy()
    late[0, 60] += 5.0
    diff = np.abs(activations(late) - ref).max(axis=0)
    assert diff[:60].max() <= 1e-6  # the past does not see the future
    assert diff[60] > 1e-3

    early = base.copy()
    early[0, 0] += 5.0
    diff = np.abs(activations(early) - ref).max(axis=0)
    # 1 + (3 - 1) * (1 + 2 + 4 + 8) = 31 steps: step 0 reaches step 30 and no further
    assert diff[30] > 1e-4
    assert diff[31:].max() <= 1e-6
