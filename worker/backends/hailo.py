"""The `hailo` backend: the encoder on a Hailo-8/8L through HailoRT's async InferModel API.

Start-up contract (the worker relies on it):

1. The constructor does every check that needs no device and raises `ConfigError` (exit 2)
   for each: HailoRT's wheel importable; HEF_PATH's sha256 not contradicted by
   HEF_SHA256_FILE; the HEF readable by HailoRT (`HEF(...)` parses it on the host); its
   single input holding WINDOW_LENGTH x CHANNELS values; outputs matching LATENT_DIM and
   NUM_MOTIFS. A HEF compiled for another architecture than the device is a ConfigError too.
2. It then opens the device. If that fails (no device, or one held by another process:
   HAILO_OUT_OF_PHYSICAL_DEVICES), the constructor still returns, with `available` False
   and the reason in `unavailable_reason`; `infer()` raises InferenceError(device_lost=True)
   so the worker serves per HAILO_FALLBACK and calls `reopen()` with backoff.
3. Any HailoRT error or timeout during a batch raises InferenceError(device_lost=True) and
   makes the backend unavailable until `reopen()` succeeds. A timeout is an error, never
   made-up values.

The HEF is read once: the bytes hashed are the bytes given to HailoRT, at start and at
every reopen. One VDevice (ROUND_ROBIN scheduler), one configured model kept open for the
backend's life, and a pool of BATCH_MAX_SIZE Bindings (one Bindings is one frame).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from worker.backends.base import PIPELINE_DEPTH, Floats, InferenceError, Pending
from worker.hef import verify_hef
from worker.settings import ConfigError, WorkerSettings

log = logging.getLogger(__name__)

WHEEL_HINT = (
    "INFER_MODE: hailo needs HailoRT's Python wheel (hailort, import hailo_platform): "
    "on a Pi `sudo apt install hailo-all`; elsewhere install the hailort wheel matching the "
    "driver from Hailo's developer zone (it needs numpy<2)"
)


CLOSE_WAIT_S = 5.0


class _Refused(Exception):
    """The device will never run this HEF (not a passing fault): ConfigError at start."""


@dataclass(frozen=True)
class HailoRT:
    """The lazily imported wheel: the package and the module holding its exception classes."""

    hp: ModuleType
    rt: ModuleType


def import_hailort() -> HailoRT:
    try:
        hp = importlib.import_module("hailo_platform")
        rt = importlib.import_module("hailo_platform.pyhailort.pyhailort")
    except Exception as exc:  # ImportError, or the wheel's own MissingPyHRTLib / version check
        raise ConfigError(f"{WHEEL_HINT} ({type(exc).__name__}: {exc})") from exc
    return HailoRT(hp, rt)


@dataclass(frozen=True)
class Layout:
    """The HEF's streams as this backend uses them (shapes exclude the batch axis)."""

    input_name: str
    input_shape: tuple[int, ...]
    outputs: dict[str, tuple[int, ...]]
    latent_name: str
    motif_name: str


def _describe(outputs: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{n} ({math.prod(s)} values)" for n, s in outputs.items())


def _choose(setting: str, dim: int, name_setting: str, name: str | None,
            outputs: Mapping[str, tuple[int, ...]], taken: set[str]) -> str:
    if name:
        if name not in outputs:
            raise ConfigError(f"{name_setting}: the HEF has no output {name!r}; it has "
                              f"{_describe(outputs)}")
        if math.prod(outputs[name]) != dim:
            raise ConfigError(f"{setting}: {setting}={dim} but output {name!r} has "
                              f"{math.prod(outputs[name])} values")
        return name
    hits = [n for n, s in outputs.items() if math.prod(s) == dim and n not in taken]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ConfigError(f"{setting}: {setting}={dim} matches no output of the HEF, which has "
                          f"{_describe(outputs)}")
    raise ConfigError(f"{setting}: {len(hits)} HEF outputs have {dim} values ({', '.join(hits)}); "
                      f"set {name_setting} to the one to use")


def map_outputs(outputs: Mapping[str, tuple[int, ...]], latent_dim: int, num_motifs: int,
                latent_name: str | None = None, motif_name: str | None = None) -> tuple[str, str]:
    """Which output stream is the latent and which the motif scores.

    Compiled stream names carry the network prefix and the compiler's layer names, so they
    are matched by element count unless a name is configured.
    """
    latent = _choose("LATENT_DIM", latent_dim, "HAILO_LATENT_OUTPUT", latent_name, outputs, set())
    motif = _choose("NUM_MOTIFS", num_motifs, "HAILO_MOTIF_OUTPUT", motif_name, outputs, {latent})
    if motif == latent:
        raise ConfigError("HAILO_MOTIF_OUTPUT: names the same output as the latent")
    return latent, motif


def read_layout(rt: HailoRT, settings: WorkerSettings, hef_bytes: bytes) -> Layout:
    try:
        hef = rt.hp.HEF(hef_bytes)
        inputs = list(hef.get_input_vstream_infos())
        outputs = {str(o.name): tuple(int(d) for d in o.shape)
                   for o in hef.get_output_vstream_infos()}
    except rt.rt.HailoRTException as exc:
        raise ConfigError(f"HEF_PATH: HailoRT cannot read {settings.hef_path}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if len(inputs) != 1:
        raise ConfigError(f"HEF_PATH: {settings.hef_path} has {len(inputs)} inputs; the encoder "
                          "takes one window")
    in_shape = tuple(int(d) for d in inputs[0].shape)
    want = settings.window_length * settings.channels
    if math.prod(in_shape) != want:
        raise ConfigError(
            f"WINDOW_LENGTH/CHANNELS: a window is {settings.window_length}x{settings.channels} = "
            f"{want} values but the HEF's input {inputs[0].name} has shape {in_shape} "
            f"({math.prod(in_shape)} values)")
    names = [getattr(settings, "hailo_latent_output", None),
             getattr(settings, "hailo_motif_output", None)]
    latent, motif = map_outputs(outputs, settings.latent_dim, settings.num_motifs,
                                *(str(n) if n else None for n in names))
    return Layout(str(inputs[0].name), in_shape, outputs, latent, motif)


@dataclass
class _Slot:
    """One pooled Bindings (= one frame), its streams, and the output arrays it writes into.

    The streams are looked up once: a batch then costs one `set_buffer` per stream and frame.
    """

    bindings: Any
    outputs: dict[str, np.ndarray]
    input_stream: Any
    output_streams: list[tuple[Any, np.ndarray]]


@dataclass
class _Open:
    """Everything that exists while the device is open."""

    vdevice: Any
    model: Any = None
    configured: Any = None
    slot_sets: list[list[_Slot]] = field(default_factory=list)
    turn: int = 0  # which slot set the last batch used
    queue_size: int = 1
    devices: list[Any] = field(default_factory=list)
    identity: dict[str, object] = field(default_factory=dict)


class HailoBackend:
    mode = "hailo"

    def __init__(self, settings: WorkerSettings) -> None:
        self._rt = import_hailort()
        self.hef_path = settings.hef_path
        try:
            self._hef_bytes = settings.hef_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"HEF_PATH: cannot read {settings.hef_path}: {exc}") from exc
        self.hef_sha256 = verify_hef(settings.hef_path, settings.hef_sha256_file,
                                     data=self._hef_bytes)
        self.layout = read_layout(self._rt, settings, self._hef_bytes)
        self.model_id = settings.hef_path.stem
        self.latent_dim = settings.latent_dim
        self.num_motifs = settings.num_motifs
        self._batch = settings.batch_max_size
        self._timeout_ms = settings.device_timeout_ms
        self._lock = threading.Lock()
        self._open: _Open | None = None
        self.unavailable_reason: str | None = None
        try:
            self._open_device()
        except _Refused as exc:
            raise ConfigError(str(exc)) from exc
        except self._rt.rt.HailoRTException as exc:
            self._set_unavailable(f"cannot open the Hailo device: {type(exc).__name__}: {exc}")

    @property
    def available(self) -> bool:
        return self.unavailable_reason is None

    # -- device lifecycle -------------------------------------------------------------------

    def _open_device(self) -> None:
        hp, rt = self._rt.hp, self._rt.rt
        params = hp.VDevice.create_params()
        params.scheduling_algorithm = hp.HailoSchedulingAlgorithm.ROUND_ROBIN
        opened = _Open(vdevice=hp.VDevice(params))
        try:
            opened.model = opened.vdevice.create_infer_model(self._hef_bytes)
            self._configure(opened)
        except BaseException as exc:
            self._release(opened)
            # HailoRT keeps the chip open while any InferModel lives; a traceback kept by the
            # caller must not hold one in a frame's locals, or every reopen would fail.
            traceback.clear_frames(exc.__traceback__)
            if isinstance(exc, rt.HailoRTHEFNotCompatibleWithDevice):
                raise _Refused(f"HEF_PATH: {self.hef_path} was compiled for another Hailo "
                               f"architecture than this device: {exc}") from exc
            raise
        self._open = opened
        self.unavailable_reason = None
        log.info("hailo device open: %s, %d bindings, async queue %d", opened.identity,
                 sum(map(len, opened.slot_sets)), opened.queue_size)

    def _configure(self, opened: _Open) -> None:
        hp, model, layout = self._rt.hp, opened.model, self.layout
        model.set_batch_size(self._batch)
        model.input(layout.input_name).set_format_type(hp.FormatType.FLOAT32)
        for name in model.output_names:
            model.output(name).set_format_type(hp.FormatType.FLOAT32)
        shapes = {str(n): tuple(int(d) for d in model.output(n).shape) for n in model.output_names}
        in_shape = tuple(int(d) for d in model.input(layout.input_name).shape)
        if shapes != layout.outputs or in_shape != layout.input_shape:
            raise _Refused(f"HEF_PATH: the device's view of {self.hef_path} ({in_shape} -> "
                           f"{shapes}) differs from the HEF's ({layout.input_shape} -> "
                           f"{layout.outputs})")
        opened.configured = model.configure()
        opened.configured.__enter__()
        for _ in range(PIPELINE_DEPTH):
            slots = []
            for _ in range(self._batch):
                buffers = {n: np.empty(s, dtype=np.float32) for n, s in layout.outputs.items()}
                bindings = opened.configured.create_bindings(output_buffers=buffers)
                slots.append(_Slot(bindings, buffers, bindings.input(layout.input_name),
                                   [(bindings.output(n), a) for n, a in buffers.items()]))
            opened.slot_sets.append(slots)
        opened.queue_size = max(1, int(opened.configured.get_async_queue_size()))
        opened.identity, opened.devices = self._identify(opened.vdevice)

    def _identify(self, vdevice: Any) -> tuple[dict[str, object], list[Any]]:
        # Identity is nice to have: any failure here (Device() raises the C++ layer's own
        # exception type) leaves it empty rather than failing the open.
        try:
            devices = list(vdevice.get_physical_devices())
            board = devices[0].control.identify()
        except Exception as exc:
            log.warning("hailo device identity unavailable: %s: %s", type(exc).__name__, exc)
            return {}, []
        return {
            "device_id": str(devices[0].device_id),
            "architecture": str(board.device_architecture),
            "serial_number": str(board.serial_number).rstrip("\x00").strip() or None,
            "board_name": str(board.board_name).rstrip("\x00").strip() or None,
            "firmware_version": str(board.firmware_version),
        }, devices

    def _release(self, opened: _Open | None) -> None:
        """Close in reverse order; every step runs even if an earlier one failed."""
        if opened is None:
            return
        for device in opened.devices:
            _quietly(device.release)
        if opened.configured is not None:
            _quietly(opened.configured.shutdown)
            _quietly(lambda: opened.configured.__exit__(None, None, None))
        # HailoRT keeps the chip open while any InferModel lives: drop them before release.
        opened.slot_sets.clear()
        opened.devices.clear()
        opened.configured = None
        opened.model = None
        _quietly(opened.vdevice.release)

    def _set_unavailable(self, reason: str) -> None:
        if self.unavailable_reason is None:
            log.warning("hailo backend unavailable: %s", reason)
        self.unavailable_reason = reason

    # -- Backend interface ------------------------------------------------------------------

    def infer(self, windows: Floats) -> tuple[Floats, Floats]:
        return self.submit(windows)()

    def submit(self, windows: Floats) -> Pending:
        """Start a batch on the chip and return at once; call the result to wait for it.

        Up to PIPELINE_DEPTH batches may be on the chip at once (each has its own bindings),
        so the host can answer one batch while the chip runs the next.
        """
        with self._lock:
            opened = self._open
            if opened is None or self.unavailable_reason is not None:
                raise InferenceError(f"hailo device unavailable: {self.unavailable_reason}",
                                     device_lost=True)
            n = int(windows.shape[0])
            if not 1 <= n <= self._batch:
                raise InferenceError(f"batch of {n} windows; BATCH_MAX_SIZE is {self._batch}")
            if math.prod(windows.shape[1:]) != math.prod(self.layout.input_shape):
                raise InferenceError(f"windows of shape {windows.shape[1:]} do not fit the HEF's "
                                     f"input {self.layout.input_shape}")
            frames = np.ascontiguousarray(windows, dtype=np.float32).reshape(
                (n, *self.layout.input_shape))
            opened.turn = (opened.turn + 1) % len(opened.slot_sets)
            slots = opened.slot_sets[opened.turn][:n]
            # DEVICE_TIMEOUT_MS bounds the whole batch, however many chunks and waits it takes.
            deadline = time.monotonic() + self._timeout_ms / 1000
            errors: list[BaseException] = []
            with self._device_errors():
                jobs = self._start(opened, frames, slots, deadline, errors)

        def result() -> tuple[Floats, Floats]:
            with self._device_errors():
                for job in jobs:
                    job.wait(_left_ms(deadline))
                if errors:
                    raise errors[0]
            latent = np.stack([s.outputs[self.layout.latent_name].reshape(-1) for s in slots])
            motifs = np.stack([s.outputs[self.layout.motif_name].reshape(-1) for s in slots])
            return latent, motifs

        return result

    @contextlib.contextmanager
    def _device_errors(self) -> Iterator[None]:
        """HailoRT's errors as InferenceError(device_lost): the device needs a reopen."""
        try:
            yield
        except self._rt.rt.HailoRTException as exc:
            traceback.clear_frames(exc.__traceback__)  # see _open_device
            if isinstance(exc, self._rt.rt.HailoRTTimeout):
                reason = f"no answer from the device within DEVICE_TIMEOUT_MS={self._timeout_ms}"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            self._set_unavailable(reason)
            raise InferenceError(f"hailo: {reason}", device_lost=True) from exc

    def _start(self, opened: _Open, frames: np.ndarray, slots: list[_Slot], deadline: float,
               errors: list[BaseException]) -> list[Any]:
        def done(completion_info: Any) -> None:
            # A failed job does not make job.wait() raise: its error only arrives here.
            if completion_info.exception is not None:
                errors.append(completion_info.exception)

        for frame, slot in zip(frames, slots, strict=True):
            slot.input_stream.set_buffer(frame)
            # HailoRT's wrapper swaps each output for a DMA buffer during run_async and leaves
            # the Bindings pointing at it: a reused Bindings needs its outputs set again.
            for stream, buffer in slot.output_streams:
                stream.set_buffer(buffer)
        configured, jobs = opened.configured, []
        for start in range(0, len(slots), opened.queue_size):
            part = [s.bindings for s in slots[start:start + opened.queue_size]]
            configured.wait_for_async_ready(timeout_ms=_left_ms(deadline), frames_count=len(part))
            jobs.append(configured.run_async(part, done))
        return jobs

    def reopen(self) -> None:
        with self._lock:
            self._release(self._open)
            self._open = None
            try:
                self._open_device()
            except _Refused as exc:
                self._set_unavailable(str(exc))
                raise InferenceError(str(exc), device_lost=True) from exc
            except self._rt.rt.HailoRTException as exc:
                self._set_unavailable(f"cannot open the Hailo device: {type(exc).__name__}: {exc}")
                raise InferenceError(f"hailo device still unavailable: {exc}",
                                     device_lost=True) from exc

    def info(self) -> dict[str, object]:
        layout = self.layout
        got = self._lock.acquire(timeout=0.2)
        try:
            opened = self._open
            identity = dict(opened.identity) if opened else {}
            queue_size = opened.queue_size if opened else None
            temperature = self._temperature(opened) if got and opened else None
        finally:
            if got:
                self._lock.release()
        return {
            "backend": "hailo",
            "model": self.model_id,
            "hef_path": str(self.hef_path),
            "hef_sha256": self.hef_sha256,
            "hailort_version": getattr(self._rt.hp, "__version__", None),
            "available": self.available,
            "detail": self.unavailable_reason,
            "input": {"name": layout.input_name, "shape": list(layout.input_shape)},
            "outputs": {
                "latent": {"name": layout.latent_name,
                           "shape": list(layout.outputs[layout.latent_name])},
                "motif_scores": {"name": layout.motif_name,
                                 "shape": list(layout.outputs[layout.motif_name])},
            },
            "latent_dim": self.latent_dim,
            "num_motifs": self.num_motifs,
            "batch_size": self._batch,
            "async_queue_size": queue_size,
            "device": identity or None,
            "temperature_c": temperature,
        }

    def _temperature(self, opened: _Open) -> float | None:
        """The hotter of the chip's two sensors; None when HailoRT cannot say."""
        if not opened.devices:
            return None
        try:
            t = opened.devices[0].control.get_chip_temperature()
            return round(max(float(t.ts0_temperature), float(t.ts1_temperature)), 1)
        except Exception as exc:
            log.debug("hailo temperature unavailable: %s", exc)
            return None

    def close(self) -> None:
        # A reopen or batch start hung in the driver holds the lock: waiting for it would
        # hang the shutdown too. The process is ending; the OS releases the device.
        if not self._lock.acquire(timeout=CLOSE_WAIT_S):
            log.warning("hailo device busy in a call that hangs; leaving it to the OS")
            return
        try:
            self._release(self._open)
            self._open = None
            if self.unavailable_reason is None:
                self.unavailable_reason = "closed"
        finally:
            self._lock.release()


def _left_ms(deadline: float) -> int:
    """Milliseconds to `deadline`, at least 1 (HailoRT then times out if the job is not done)."""
    return max(1, int((deadline - time.monotonic()) * 1000))


def _quietly(step: Any) -> None:
    try:
        step()
    except Exception as exc:
        log.debug("hailo release step failed: %s: %s", type(exc).__name__, exc)
