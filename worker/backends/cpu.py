"""The `cpu` backend: the ONNX model (ONNX_PATH) run by onnxruntime on the host CPU.

At start the model is checked against the settings: one input holding WINDOW_LENGTH x CHANNELS
values a window, and a latent and a motif-score output of LATENT_DIM and NUM_MOTIFS values, found
by the names `latent` / `motif_scores` or else by their sizes. A mismatch is a ConfigError that
names the setting. A batch runs in one `session.run` call when the model's batch axis is dynamic.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from worker.backends.base import Floats, InferenceError
from worker.settings import ConfigError, WorkerSettings

LATENT_NAME = "latent"
MOTIFS_NAME = "motif_scores"
# Measured on a 2-core x86 host (bench/bench_cpu.py): one thread costs 26-50 us of CPU a window,
# two cost 2-2.5x that (the pool spins); two were faster only at batch >= 8 on an idle host, and
# slower whenever the other core was busy, as it is with the MQTT loop beside it.
INTRA_OP_THREADS = 1
_FLOAT_TYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            "INFER_MODE: the cpu backend needs onnxruntime: pip install 'hailo-edge-worker[cpu]'"
        ) from exc
    return onnxruntime


def _shape(dims: list[Any]) -> list[int | str]:
    return [d if isinstance(d, int) else str(d) for d in dims]


class CpuBackend:
    mode = "cpu"
    available = True

    def __init__(self, settings: WorkerSettings, *, threads: int = INTRA_OP_THREADS) -> None:
        self._ort = _import_ort()
        self.threads = threads
        self.path: Path = settings.onnx_path
        self.model_id = self.path.stem
        self.window_length = settings.window_length
        self.channels = settings.channels
        self.latent_dim = settings.latent_dim
        self.num_motifs = settings.num_motifs
        self._session: Any = None
        self._load()

    # -- loading and checking -------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"ONNX_PATH: cannot read {self.path}: {exc}") from exc
        self.sha256 = hashlib.sha256(data).hexdigest()
        opts = self._ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # ERROR: its load-time warnings are noise in the worker log
        try:
            session = self._ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types for a bad model
            raise ConfigError(f"ONNX_PATH: onnxruntime cannot load {self.path}: {exc}") from exc
        self._check_input(session)
        self._check_outputs(session)
        self._session = session

    def _check_input(self, session: Any) -> None:
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(f"ONNX_PATH: the model has {len(inputs)} inputs; one is needed")
        spec = inputs[0]
        self.input_name: str = spec.name
        self.input_shape = _shape(spec.shape)
        if spec.type not in _FLOAT_TYPES:
            raise ConfigError(f"ONNX_PATH: input {spec.name} is {spec.type}, not a float tensor")
        self._input_dtype = _FLOAT_TYPES[spec.type]
        rest = spec.shape[1:]
        if not rest or not all(isinstance(d, int) for d in rest):
            raise ConfigError(
                f"ONNX_PATH: input {spec.name} has shape {self.input_shape}; it needs a batch axis"
                " and fixed window dimensions"
            )
        wanted = self.window_length * self.channels
        if math.prod(rest) != wanted:
            raise ConfigError(
                f"WINDOW_LENGTH/CHANNELS: the model's input {spec.name} {self.input_shape} takes"
                f" {math.prod(rest)} values a window, but WINDOW_LENGTH x CHANNELS ="
                f" {self.window_length} x {self.channels} = {wanted}"
            )
        self._window_shape: tuple[int, ...] = tuple(rest)
        # A channels-first model ([C, L], PyTorch's Conv1d layout) gets the window transposed:
        # a plain reshape would feed it scrambled data without any error.
        core = [d for d in rest if d != 1]
        self._transpose = core == [self.channels, self.window_length] and (
            self.channels != self.window_length
        )
        batch = spec.shape[0]
        self._fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def _check_outputs(self, session: Any) -> None:
        outputs = {o.name: o for o in session.get_outputs()}
        sizes: dict[str, int] = {}
        for o in outputs.values():
            dims = o.shape[1:]
            if o.type not in _FLOAT_TYPES or not all(isinstance(d, int) for d in dims):
                raise ConfigError(
                    f"ONNX_PATH: output {o.name} is {o.type} {_shape(o.shape)}; float outputs of"
                    " fixed size per window are needed"
                )
            sizes[o.name] = math.prod(dims)
        if LATENT_NAME in sizes and MOTIFS_NAME in sizes:
            latent, motifs = LATENT_NAME, MOTIFS_NAME
        elif len(sizes) != 2:
            raise ConfigError(
                f"ONNX_PATH: the model has {len(sizes)} outputs {sorted(sizes)}; it needs two,"
                f" {LATENT_NAME!r} and {MOTIFS_NAME!r}"
            )
        else:
            a, b = sizes
            # Match by size; when neither order fits, the error below names the odd one out.
            latent, motifs = a, b
            swap = sizes[b] == self.latent_dim or sizes[a] == self.num_motifs
            if sizes[a] != self.latent_dim and swap:
                latent, motifs = b, a
        if sizes[latent] != self.latent_dim:
            raise ConfigError(
                f"LATENT_DIM: the model's output {latent} has {sizes[latent]} values,"
                f" but LATENT_DIM = {self.latent_dim}"
            )
        if sizes[motifs] != self.num_motifs:
            raise ConfigError(
                f"NUM_MOTIFS: the model's output {motifs} has {sizes[motifs]} values,"
                f" but NUM_MOTIFS = {self.num_motifs}"
            )
        self.output_names = (latent, motifs)
        self.output_shapes = {n: _shape(outputs[n].shape) for n in self.output_names}

    # -- the Backend interface ------------------------------------------------------------

    def infer(self, windows: Floats) -> tuple[Floats, Floats]:
        session = self._session
        if session is None:
            raise InferenceError("cpu backend is closed", device_lost=True)
        n = windows.shape[0]
        if windows.shape[1:] != (self.window_length, self.channels):
            raise InferenceError(f"windows of shape {windows.shape[1:]}, expected"
                                 f" ({self.window_length}, {self.channels})")
        x = windows.transpose(0, 2, 1) if self._transpose else windows
        x = np.ascontiguousarray(x.reshape((n, *self._window_shape)), dtype=self._input_dtype)
        step = self._fixed_batch or n
        latents, motifs = [], []
        try:
            for start in range(0, n, step):
                chunk = x[start : start + step]
                if len(chunk) < step:  # a fixed-batch model gets its last chunk zero-padded
                    pad = np.zeros((step - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                lat, mot = session.run(list(self.output_names), {self.input_name: chunk})
                latents.append(self._rows(lat, step, self.latent_dim, self.output_names[0]))
                motifs.append(self._rows(mot, step, self.num_motifs, self.output_names[1]))
        except InferenceError:
            raise
        except Exception as exc:  # onnxruntime's pybind exceptions share no public base class
            raise InferenceError(f"onnxruntime: {exc}") from exc
        return (np.ascontiguousarray(np.concatenate(latents)[:n], dtype=np.float32),
                np.ascontiguousarray(np.concatenate(motifs)[:n], dtype=np.float32))

    @staticmethod
    def _rows(out: Any, rows: int, width: int, name: str) -> Floats:
        """`out` as [rows, width], refusing a model whose run disagrees with its declared shape."""
        arr = np.asarray(out)
        if arr.ndim == 0 or arr.shape[0] != rows or arr.size != rows * width:
            raise InferenceError(
                f"model output {name} has shape {arr.shape}, expected {rows} rows of {width}"
            )
        return arr.reshape(rows, width)

    def reopen(self) -> None:
        try:
            self._load()
        except ConfigError as exc:
            raise InferenceError(str(exc), device_lost=True) from exc

    def info(self) -> dict[str, object]:
        return {
            "backend": self.mode,
            "model": self.model_id,
            "onnx_path": str(self.path),
            "onnx_sha256": self.sha256,
            "input": {"name": self.input_name, "shape": self.input_shape},
            "outputs": {"latent": self.output_names[0], "motif_scores": self.output_names[1],
                        "shapes": self.output_shapes},
            "channels_first": self._transpose,
            "onnxruntime": self._ort.__version__,
            "intra_op_threads": self.threads,
        }

    def close(self) -> None:
        self._session = None
