"""The cpu backend against onnxruntime itself, and its start-up checks against the settings."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from worker.backends import InferenceError, create
from worker.backends.cpu import CpuBackend
from worker.settings import REFERENCE_ONNX, ConfigError, WorkerSettings

TOL = 1e-5


def settings(**kw: Any) -> WorkerSettings:
    return WorkerSettings(infer_mode="cpu", **kw)


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 100, 9)).astype(np.float32)


@pytest.fixture(scope="module")
def backend() -> CpuBackend:
    return CpuBackend(settings())


@pytest.fixture(scope="module")
def reference() -> ort.InferenceSession:
    return ort.InferenceSession(str(REFERENCE_ONNX), providers=["CPUExecutionProvider"])


def variant(tmp_path: Path, edit: Callable[[onnx.ModelProto], None]) -> Path:
    """The reference model changed by `edit`, saved beside the test."""
    m = onnx.load(str(REFERENCE_ONNX))
    edit(m)
    onnx.checker.check_model(m)
    path = tmp_path / "variant.onnx"
    onnx.save(m, str(path))
    return path


def prepend(m: onnx.ModelProto, new_input: onnx.ValueInfoProto, nodes: list[onnx.NodeProto],
            inits: tuple[onnx.TensorProto, ...] = ()) -> None:
    """Feed the reference graph's input `x` from `nodes`, which read `new_input`."""
    del m.graph.input[:]
    m.graph.input.append(new_input)
    m.graph.initializer.extend(inits)
    old = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend([*nodes, *old])


def test_single_window_matches_onnxruntime(
    backend: CpuBackend, reference: ort.InferenceSession
) -> None:
    x = windows(1, seed=7)
    latent, motifs = backend.infer(x)
    want_latent, want_motifs = reference.run(["latent", "motif_scores"], {"x": x})
    np.testing.assert_allclose(latent, want_latent, atol=TOL, rtol=0)
    np.testing.assert_allclose(motifs, want_motifs, atol=TOL, rtol=0)
    assert latent.dtype == motifs.dtype == np.float32
    assert latent.flags.c_contiguous and motifs.flags.c_contiguous


@pytest.mark.parametrize("n", range(1, 9))
def test_batch_rows_equal_each_window_alone(
    backend: CpuBackend, reference: ort.InferenceSession, n: int
) -> None:
    x = windows(n, seed=n)
    latent, motifs = backend.infer(x)
    assert latent.shape == (n, 64) and motifs.shape == (n, 12)
    want_latent, want_motifs = reference.run(["latent", "motif_scores"], {"x": x})
    np.testing.assert_allclose(latent, want_latent, atol=TOL, rtol=0)
    np.testing.assert_allclose(motifs, want_motifs, atol=TOL, rtol=0)
    for i in range(n):
        alone_latent, alone_motifs = backend.infer(x[i : i + 1])
        np.testing.assert_allclose(latent[i], alone_latent[0], atol=TOL, rtol=0)
        np.testing.assert_allclose(motifs[i], alone_motifs[0], atol=TOL, rtol=0)
    assert len({r.tobytes() for r in latent}) == n  # rows really differ


def test_registry_builds_it_and_info_describes_the_model() -> None:
    b = create("cpu", settings())
    assert isinstance(b, CpuBackend)
    assert (b.mode, b.model_id) == ("cpu", "tcn_encoder-v0.1.0")
    info = b.info()
    assert info["backend"] == "cpu" and info["model"] == "tcn_encoder-v0.1.0"
    assert info["onnx_path"] == str(REFERENCE_ONNX)
    assert info["onnx_sha256"] == hashlib.sha256(REFERENCE_ONNX.read_bytes()).hexdigest()
    assert info["input"] == {"name": "x", "shape": ["batch", 100, 9]}
    assert info["outputs"] == {
        "latent": "latent",
        "motif_scores": "motif_scores",
        "shapes": {"latent": ["batch", 64], "motif_scores": ["batch", 12]},
    }
    assert info["onnxruntime"] == ort.__version__
    b.close()


@pytest.mark.parametrize(
    ("setting", "value", "model_has"),
    [("num_motifs", 10, "12"), ("latent_dim", 32, "64"),
     ("window_length", 50, "900"), ("channels", 6, "900")],
)
def test_a_setting_that_disagrees_with_the_model_is_named(
    setting: str, value: int, model_has: str
) -> None:
    with pytest.raises(ConfigError) as err:
        CpuBackend(settings(**{setting: value}))
    msg = str(err.value)
    shape_setting = setting in ("window_length", "channels")
    assert msg.startswith("WINDOW_LENGTH/CHANNELS:" if shape_setting else f"{setting.upper()}:")
    assert model_has in msg and str(value) in msg


def test_outputs_are_matched_by_size_when_unnamed(
    tmp_path: Path, reference: ort.InferenceSession
) -> None:
    def rename(m: onnx.ModelProto) -> None:
        names = {"latent": "output_b", "motif_scores": "output_a"}
        for node in m.graph.node:
            node.output[:] = [names.get(o, o) for o in node.output]
        for out in m.graph.output:
            out.name = names[out.name]
        m.graph.output.reverse()  # motif scores first: only the sizes tell them apart

    b = CpuBackend(settings(onnx_path=variant(tmp_path, rename)))
    assert b.info()["outputs"] == {
        "latent": "output_b",
        "motif_scores": "output_a",
        "shapes": {"output_b": ["batch", 64], "output_a": ["batch", 12]},
    }
    x = windows(3)
    for got, want in zip(b.infer(x), reference.run(["latent", "motif_scores"], {"x": x}),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)

    with pytest.raises(ConfigError, match=r"^NUM_MOTIFS: .*output_a has 12 values.*= 13$"):
        CpuBackend(settings(onnx_path=b.path, num_motifs=13))


def test_a_channels_first_model_gets_transposed_windows(
    tmp_path: Path, reference: ort.InferenceSession
) -> None:
    cf = helper.make_tensor_value_info("x_cf", TensorProto.FLOAT, ["batch", 9, 100])
    path = variant(tmp_path, lambda m: prepend(
        m, cf, [helper.make_node("Transpose", ["x_cf"], ["x"], perm=[0, 2, 1])]))
    b = CpuBackend(settings(onnx_path=path))
    assert b.info()["channels_first"] is True
    x = windows(4)
    np.testing.assert_allclose(b.infer(x)[0], reference.run(["latent"], {"x": x})[0], atol=TOL)


def test_a_fixed_batch_model_is_run_in_chunks(
    tmp_path: Path, reference: ort.InferenceSession
) -> None:
    def fix_batch(m: onnx.ModelProto) -> None:
        for value in (*m.graph.input, *m.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = 2

    b = CpuBackend(settings(onnx_path=variant(tmp_path, fix_batch)))
    x = windows(5)  # two full chunks and a padded one
    got = b.infer(x)
    want = reference.run(["latent", "motif_scores"], {"x": x})
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=TOL, rtol=0)


def test_an_onnxruntime_failure_is_an_inference_error(tmp_path: Path) -> None:
    # A Reshape to [7, -1] runs only when the batch's element count divides by 7.
    flat = helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["batch", 100, 9])
    shapes = (helper.make_tensor("by7", TensorProto.INT64, [2], [7, -1]),
              helper.make_tensor("back", TensorProto.INT64, [3], [-1, 100, 9]))
    path = variant(tmp_path, lambda m: prepend(m, flat, [
        helper.make_node("Reshape", ["x_in", "by7"], ["x7"]),
        helper.make_node("Reshape", ["x7", "back"], ["x"]),
    ], shapes))
    b = CpuBackend(settings(onnx_path=path))
    assert b.infer(windows(7))[0].shape == (7, 64)
    with pytest.raises(InferenceError, match=r"^onnxruntime: ") as err:
        b.infer(windows(1))
    assert err.value.device_lost is False
    assert b.infer(windows(7))[1].shape == (7, 12)  # one bad batch does not break it


def test_a_model_whose_output_breaks_its_declared_shape_fails_the_batch(tmp_path: Path) -> None:
    def double_latent_rows(m: onnx.ModelProto) -> None:
        for node in m.graph.node:
            node.output[:] = ["latent_once" if o == "latent" else o for o in node.output]
        # Shape inference cannot size a Concat of symbolic dims, so the declared [batch, 64] stands.
        m.graph.node.append(
            helper.make_node("Concat", ["latent_once", "latent_once"], ["latent"], axis=0))

    b = CpuBackend(settings(onnx_path=variant(tmp_path, double_latent_rows)))
    with pytest.raises(InferenceError, match=r"output latent has shape \(4, 64\), expected 2 rows"):
        b.infer(windows(2))


def test_an_unloadable_file_is_an_onnx_path_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"^ONNX_PATH: onnxruntime cannot load"):
        CpuBackend(settings(onnx_path=bad))


def test_missing_onnxruntime_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ConfigError, match=r"^INFER_MODE: .*pip install 'hailo-edge-worker\[cpu\]'"):
        CpuBackend(settings())


def test_reopen_reloads_and_close_is_final() -> None:
    b = CpuBackend(settings())
    x = windows(2)
    before = b.infer(x)
    b.reopen()
    after = b.infer(x)
    np.testing.assert_array_equal(before[0], after[0])
    b.close()
    b.close()
    with pytest.raises(InferenceError):
        b.infer(x)
