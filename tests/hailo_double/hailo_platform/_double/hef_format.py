"""The double's stand-in for a compiled HEF: a magic line, then JSON.

It names the ONNX model the "chip" runs (absolute path) and describes the vstreams as the
Dataflow Compiler would have laid them out: names with the network prefix, format order,
shape without the batch axis, and the device-side format type (what AUTO resolves to).

    {"format": 1, "hw_arch": "hailo8", "network_group": "tcn_encoder",
     "onnx": "/abs/model.onnx",
     "inputs":  [{"name": "tcn_encoder/input_layer1", "onnx_name": "x",
                  "order": "NHWC", "shape": [1, 100, 9], "type": "UINT8"}],
     "outputs": [{"name": "tcn_encoder/output_layer1", "onnx_name": "latent",
                  "order": "NC", "shape": [64], "type": "UINT8"}, ...]}

A real HEF fed to the double, or this file fed to HailoRT, is refused as an invalid HEF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAGIC = b"HAILO-TEST-DOUBLE-HEF\n"
VERSION = 1
ARCHES = ("hailo8", "hailo8l")


@dataclass(frozen=True)
class StreamSpec:
    name: str
    onnx_name: str
    order: str
    shape: tuple[int, ...]
    type: str


@dataclass(frozen=True)
class HefSpec:
    hw_arch: str
    network_group: str
    onnx: str
    inputs: tuple[StreamSpec, ...]
    outputs: tuple[StreamSpec, ...]


def dumps(spec: HefSpec) -> bytes:
    def stream(s: StreamSpec) -> dict[str, Any]:
        return {"name": s.name, "onnx_name": s.onnx_name, "order": s.order,
                "shape": list(s.shape), "type": s.type}

    doc = {"format": VERSION, "hw_arch": spec.hw_arch, "network_group": spec.network_group,
           "onnx": spec.onnx, "inputs": [stream(s) for s in spec.inputs],
           "outputs": [stream(s) for s in spec.outputs]}
    return MAGIC + json.dumps(doc, indent=1).encode()


def loads(data: bytes) -> HefSpec:
    """Parse; raises ValueError on anything that is not a well-formed double HEF."""
    if not data.startswith(MAGIC):
        raise ValueError("no HAILO-TEST-DOUBLE-HEF magic")
    try:
        doc = json.loads(data[len(MAGIC):])
        if doc["format"] != VERSION or doc["hw_arch"] not in ARCHES:
            raise ValueError(f"unsupported format {doc['format']} / arch {doc['hw_arch']}")

        def stream(d: dict[str, Any]) -> StreamSpec:
            return StreamSpec(str(d["name"]), str(d["onnx_name"]), str(d["order"]),
                              tuple(int(v) for v in d["shape"]), str(d.get("type", "UINT8")))

        return HefSpec(str(doc["hw_arch"]), str(doc["network_group"]), str(doc["onnx"]),
                       tuple(stream(d) for d in doc["inputs"]),
                       tuple(stream(d) for d in doc["outputs"]))
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed double HEF: {exc}") from exc
