"""The reference TCN encoder, written as ONNX from seeded weights (untrained, for plumbing).

    python -m worker.model export [--out PATH]   write it (default: the committed artifact)
    python -m worker.model check PATH            print a model's inputs and outputs
    python -m worker.model verify                re-export and compare with the committed file

The graph is laid out for Hailo's parser: the window becomes a 4-D NCHW tensor [batch, 9, 1, 100]
and each 1-D convolution over time is a Conv with a (1, 3) kernel, dilation (1, d) and left-only
padding, so it stays causal. The two heads are plain Gemms on the pooled features, so the
weight-free tail (L2 normalisation, Softmax) can run on the host if a compiler cuts it off.
Every field of the file is fixed (IR version, opset, producer, node names, weights from a fixed
seed and uniform draws, whose stream numpy keeps stable), so an export is byte-for-byte the same.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from worker.backends.base import Floats
from worker.settings import REFERENCE_ONNX

VERSION = "0.1.0"
SEED = 20250831
WINDOW_LENGTH = 100
CHANNELS = 9
HIDDEN = 32
KERNEL = 3
DILATIONS = (1, 2, 4, 8)
LATENT_DIM = 64
NUM_MOTIFS = 12
OPSET = 17
IR_VERSION = 8  # the lowest IR that carries opset 17, so older runtimes load it
INPUT_NAME = "x"
LATENT_NAME = "latent"
MOTIFS_NAME = "motif_scores"
TCN_OUT = "tcn_out"
"""The last residual block's activations [batch, HIDDEN, 1, WINDOW_LENGTH] (tests probe it)."""
# The motif logits are scaled so the untrained head gives spread-out scores, not near-uniform.
MOTIF_GAIN = 4.0
SHA256_FILE = REFERENCE_ONNX.parent / "sha256sum.txt"


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise SystemExit("worker.model needs onnx: pip install 'hailo-edge-worker[model]'") from exc
    return onnx


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], limit: float) -> Floats:
    return ((rng.random(shape) * 2.0 - 1.0) * limit).astype("<f4")


def _weights() -> dict[str, Floats]:
    """He-uniform weights and PyTorch-style biases, drawn in one fixed order."""
    rng = np.random.default_rng(SEED)
    w: dict[str, Floats] = {}

    def layer(name: str, shape: tuple[int, ...], fan_in: int, limit: float) -> None:
        out_dim = shape[0] if len(shape) == 4 else shape[1]  # Conv [out, in, 1, k]; Gemm [in, out]
        w[f"{name}.weight"] = _uniform(rng, shape, limit)
        w[f"{name}.bias"] = _uniform(rng, (out_dim,), 1.0 / np.sqrt(fan_in))

    def he(fan_in: int) -> float:
        return float(np.sqrt(6.0 / fan_in))

    layer("conv_in", (HIDDEN, CHANNELS, 1, 1), CHANNELS, he(CHANNELS))
    for i in range(len(DILATIONS)):
        # Halved so the residual sum's variance grows gently through the stack.
        layer(f"block{i}", (HIDDEN, HIDDEN, 1, KERNEL), HIDDEN * KERNEL, 0.5 * he(HIDDEN * KERNEL))
    layer("latent_head", (HIDDEN, LATENT_DIM), HIDDEN, he(HIDDEN))
    layer("motif_head", (HIDDEN, NUM_MOTIFS), HIDDEN, MOTIF_GAIN / np.sqrt(HIDDEN))
    return w


def build() -> Any:
    """The reference encoder as an `onnx.ModelProto`."""
    onnx = _onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    weights = _weights()
    inits = [
        helper.make_tensor(name, tp.FLOAT, arr.shape, arr.tobytes(), raw=True)
        for name, arr in weights.items()
    ]
    inits.append(helper.make_tensor("unsqueeze_axes", tp.INT64, [1], [1]))
    nodes = [
        # [b, 100, 9] -> [b, 1, 100, 9] is NHWC with H=1; the transpose makes it NCHW.
        helper.make_node("Unsqueeze", [INPUT_NAME, "unsqueeze_axes"], ["x_nhwc"], name="to_nhwc"),
        helper.make_node("Transpose", ["x_nhwc"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x_nchw", "conv_in.weight", "conv_in.bias"], ["h_in_lin"],
                         name="conv_in", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["h_in_lin"], ["h_in"], name="conv_in_relu"),
    ]
    h = "h_in"
    for i, d in enumerate(DILATIONS):
        out = TCN_OUT if i == len(DILATIONS) - 1 else f"block{i}_out"
        nodes += [
            # pads = [top, left, bottom, right]: all (k-1)*d on the left keeps it causal.
            helper.make_node("Conv", [h, f"block{i}.weight", f"block{i}.bias"], [f"block{i}_conv"],
                             name=f"block{i}_conv", kernel_shape=[1, KERNEL], dilations=[1, d],
                             pads=[0, (KERNEL - 1) * d, 0, 0]),
            helper.make_node("Add", [h, f"block{i}_conv"], [f"block{i}_sum"], name=f"block{i}_add"),
            helper.make_node("Relu", [f"block{i}_sum"], [out], name=f"block{i}_relu"),
        ]
        h = out
    nodes += [
        helper.make_node("GlobalAveragePool", [h], ["pooled4d"], name="pool"),
        helper.make_node("Flatten", ["pooled4d"], ["pooled"], name="flatten", axis=1),
        helper.make_node("Gemm", ["pooled", "latent_head.weight", "latent_head.bias"],
                         ["latent_raw"], name="latent_head"),
        helper.make_node("ReduceL2", ["latent_raw"], ["latent_norm"], name="latent_norm",
                         axes=[1], keepdims=1),
        # max(norm, eps) as in torch's normalize: a zero vector stays finite.
        helper.make_node("Max", ["latent_norm", "norm_eps"], ["latent_den"], name="latent_eps"),
        helper.make_node("Div", ["latent_raw", "latent_den"], [LATENT_NAME], name="latent_l2"),
        helper.make_node("Gemm", ["pooled", "motif_head.weight", "motif_head.bias"],
                         ["motif_logits"], name="motif_head"),
        helper.make_node("Softmax", ["motif_logits"], [MOTIFS_NAME], name="motif_softmax",
                         axis=1),
    ]
    inits.append(helper.make_tensor("norm_eps", tp.FLOAT, [], [1e-12]))
    graph = helper.make_graph(
        nodes,
        "tcn_encoder",
        [helper.make_tensor_value_info(INPUT_NAME, tp.FLOAT, ["batch", WINDOW_LENGTH, CHANNELS])],
        [
            helper.make_tensor_value_info(LATENT_NAME, tp.FLOAT, ["batch", LATENT_DIM]),
            helper.make_tensor_value_info(MOTIFS_NAME, tp.FLOAT, ["batch", NUM_MOTIFS]),
        ],
        initializer=inits,
        doc_string="Reference TCN encoder (untrained, seeded weights).",
    )
    # Built field by field rather than with make_model, whose defaults follow the onnx version.
    model = onnx.ModelProto()
    model.ir_version = IR_VERSION
    model.producer_name = "hailo-edge-worker"
    model.producer_version = VERSION
    model.model_version = 1
    model.doc_string = f"tcn_encoder-v{VERSION}: dilations {list(DILATIONS)}, seed {SEED}"
    model.graph.CopyFrom(graph)
    opset = model.opset_import.add()
    opset.domain = ""
    opset.version = OPSET
    for key, value in (("latent_dim", LATENT_DIM), ("num_motifs", NUM_MOTIFS),
                       ("window_length", WINDOW_LENGTH), ("channels", CHANNELS)):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.checker.check_model(model)
    return model


def export_bytes() -> bytes:
    data: bytes = build().SerializeToString()
    return data


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe(path: Path) -> list[str]:
    """One line per input and output: name, element type and shape (symbolic dims by name)."""
    onnx = _onnx()
    model = onnx.load(str(path))
    lines = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        inits = {t.name for t in model.graph.initializer}
        for v in values:
            if v.name in inits:
                continue
            t = v.type.tensor_type
            dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
                    for d in t.shape.dim]
            elem = onnx.TensorProto.DataType.Name(t.elem_type).lower()
            lines.append(f"{kind} {v.name}: {elem} [{', '.join(dims)}]")
    return lines


def verify(committed: Path = REFERENCE_ONNX, sums: Path = SHA256_FILE) -> list[str]:
    """Problems found; empty when a fresh export equals the committed file and its listed hash."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / committed.name
        fresh.write_bytes(export_bytes())
        if not committed.is_file():
            return [f"{committed}: missing"]
        if fresh.read_bytes() != committed.read_bytes():
            problems.append(f"{committed}: differs from a fresh export ({sha256(fresh)})")
    listed = {
        name.lstrip("*"): digest
        for digest, _, name in (ln.partition("  ") for ln in sums.read_text().splitlines() if ln)
    } if sums.is_file() else {}
    if listed.get(committed.name) != sha256(committed):
        problems.append(f"{sums}: no matching line for {committed.name} ({sha256(committed)})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write the reference encoder as ONNX")
    exp.add_argument("--out", type=Path, default=REFERENCE_ONNX, help="default: %(default)s")
    chk = sub.add_parser("check", help="print a model's input and output names and shapes")
    chk.add_argument("path", type=Path)
    sub.add_parser("verify", help="re-export and compare with the committed file and its sha256")
    args = parser.parse_args(argv)

    if args.command == "export":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(export_bytes())
        print(f"{sha256(args.out)}  {args.out.name}")
        return 0
    if args.command == "check":
        try:
            lines = describe(args.path)
        except Exception as exc:  # onnx raises OSError or protobuf's DecodeError
            print(f"{args.path}: not a readable ONNX model: {exc}", file=sys.stderr)
            return 1
        print("\n".join(lines))
        return 0
    problems = verify()
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{REFERENCE_ONNX.name}: reproduced byte for byte, sha256 {sha256(REFERENCE_ONNX)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
