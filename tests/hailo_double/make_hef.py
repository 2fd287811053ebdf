"""Write a HEF for the HailoRT test double (and, for tests, a tiny ONNX model to back it).

    python tests/hailo_double/make_hef.py OUT.hef [--onnx artifacts/tcn_encoder-v0.1.0.onnx]
        [--arch hailo8|hailo8l] [--reverse-outputs] [--sums]

The HEF names the ONNX model the double's "chip" runs and lays its streams out the way the
Dataflow Compiler does for this encoder: one NHWC input (1, WINDOW_LENGTH, CHANNELS) and one
NC output per ONNX output, named with the network prefix ("tcn_encoder/input_layer1",
"tcn_encoder/output_layer1", ...) so a backend has to map outputs by size, not by name.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from hailo_platform._double.hef_format import HefSpec, StreamSpec, dumps  # noqa: E402

REPO = _HERE.parent.parent
REFERENCE_ONNX = REPO / "artifacts" / "tcn_encoder-v0.1.0.onnx"


Shape = tuple[int, ...]


def _onnx_io(onnx_path: Path) -> tuple[tuple[str, Shape], list[tuple[str, Shape]]]:
    import onnx

    model = onnx.load(str(onnx_path))
    init = {i.name for i in model.graph.initializer}

    def tail(value: onnx.ValueInfoProto) -> tuple[int, ...]:
        dims = value.type.tensor_type.shape.dim[1:]
        if not all(d.HasField("dim_value") for d in dims):
            raise ValueError(f"{value.name}: only the batch axis may be symbolic")
        return tuple(int(d.dim_value) for d in dims)

    inputs = [(v.name, tail(v)) for v in model.graph.input if v.name not in init]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path}: expected one input, found {len(inputs)}")
    return inputs[0], [(v.name, tail(v)) for v in model.graph.output]


def write_hef(path: Path, onnx_path: Path = REFERENCE_ONNX, *, network: str = "tcn_encoder",
              hw_arch: str = "hailo8", reverse_outputs: bool = False,
              input_shape: tuple[int, ...] | None = None) -> Path:
    """Write the double's HEF for `onnx_path`; returns `path`.

    `input_shape` overrides the NHWC input layout (it must hold the same number of values).
    """
    onnx_path = Path(onnx_path).resolve()
    (in_name, in_tail), outs = _onnx_io(onnx_path)
    if input_shape is None:
        input_shape = (1, *in_tail) if len(in_tail) == 2 else in_tail
    if math.prod(input_shape) != math.prod(in_tail):
        raise ValueError(f"input_shape {input_shape} does not hold {in_tail}")
    inputs = (StreamSpec(f"{network}/input_layer1", in_name, "NHWC", tuple(input_shape), "UINT8"),)
    ordered = list(reversed(outs)) if reverse_outputs else outs
    outputs = tuple(
        StreamSpec(f"{network}/output_layer{i + 1}", name, "NC", (math.prod(tail),), "UINT8")
        for i, (name, tail) in enumerate(ordered))
    spec = HefSpec(hw_arch, network, str(onnx_path), inputs, outputs)
    path = Path(path)
    path.write_bytes(dumps(spec))
    return path


def write_sums(hef_path: Path, sums_path: Path | None = None, digest: str | None = None) -> Path:
    """Write a sha256sum-style list for `hef_path` (default: hef_sha256sum.txt beside it)."""
    hef_path = Path(hef_path)
    sums_path = sums_path or hef_path.parent / "hef_sha256sum.txt"
    digest = digest or hashlib.sha256(hef_path.read_bytes()).hexdigest()
    sums_path.write_text(f"{digest}  {hef_path.name}\n")
    return sums_path


def write_tiny_onnx(path: Path, *, window_length: int = 100, channels: int = 9,
                    latent_dim: int = 64, num_motifs: int = 12, seed: int = 0) -> Path:
    """A small stand-in with the reference model's interface: x [batch, L, C] ->
    latent [batch, latent_dim], motif_scores [batch, num_motifs] (softmax)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    n_in = window_length * channels
    w1 = (rng.standard_normal((n_in, latent_dim)) / np.sqrt(n_in)).astype(np.float32)
    w2 = (rng.standard_normal((latent_dim, num_motifs)) / np.sqrt(latent_dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w1"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["latent"]),
         helper.make_node("MatMul", ["latent", "w2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["motif_scores"], axis=-1)],
        "tiny_tcn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", window_length, channels])],
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", latent_dim]),
         helper.make_tensor_value_info("motif_scores", TensorProto.FLOAT, ["batch", num_motifs])],
        [numpy_helper.from_array(np.array([-1, n_in], dtype=np.int64), "flat_shape"),
         numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="HEF file to write")
    p.add_argument("--onnx", type=Path, default=REFERENCE_ONNX, help="model the chip runs")
    p.add_argument("--arch", choices=("hailo8", "hailo8l"), default="hailo8")
    p.add_argument("--reverse-outputs", action="store_true", help="list motif scores first")
    p.add_argument("--sums", action="store_true", help="also write hef_sha256sum.txt beside it")
    a = p.parse_args(argv)
    write_hef(a.out, a.onnx, hw_arch=a.arch, reverse_outputs=a.reverse_outputs)
    if a.sums:
        print(write_sums(a.out))
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
