"""`InferModel`, `ConfiguredInferModel`, its `Bindings`, and `AsyncInferJob` (HailoRT's async API).

Behaviour copied from HailoRT 4.x (pyhailort.py, infer_model_api.cpp, infer_model.cpp):
- one Bindings object is ONE frame; a batch is a list of Bindings given to `run_async`;
- `set_buffer` refuses a non C-contiguous array (HailoRTException);
- `run_async` checks every binding: an input without a buffer -> HailoRTNotFoundException,
  an output without one -> HailoRTInvalidOperationException, a byte size other than the
  stream's frame size (shape x bytes of its format type) -> HailoRTInvalidOperationException;
  the double is stricter and also refuses a right-sized buffer of another shape or dtype;
  a refused `run_async` shuts the pipeline down, as HailoRT's does;
- for each output, the wrapper swaps in a DMA-able buffer for the job and copies it back to
  the buffer the Bindings pointed at. The Bindings keeps pointing at the swapped-in buffer,
  which HailoRT frees after the job: reusing a Bindings without setting its output buffers
  again sends the results nowhere (here: a warning, and the user's array is not updated);
- `job.wait` raises HailoRTTimeout; a job that FAILED does not make `wait` raise: the error
  only reaches the callback (`completion_info.exception`);
- `wait_for_async_ready(timeout_ms, frames_count)` times out when more frames are asked for
  than the async queue can take (`get_async_queue_size`);
- with scheduling_algorithm NONE the model must be `activate()`d before it runs.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hailo_platform._double.control import Faults, control, record
from hailo_platform._double.engine import Chip, Frame, Job, OutputCopy, lost_error
from hailo_platform._double.hef_format import HefSpec, StreamSpec
from hailo_platform.pyhailort._common import (
    FORMAT_BYTES,
    AsyncInferCompletionInfo,
    FormatOrder,
    FormatType,
    HailoFormat,
    HailoRTException,
    QuantInfo,
    status_error,
)
from hailo_platform.pyhailort._device import ChipHandle
from hailo_platform.pyhailort._hef import HEF

log = logging.getLogger("hailo_platform.double")


def _pick(names: Sequence[str], name: str, kind: str) -> str:
    if name == "":
        if len(names) != 1:
            raise status_error("HAILO_INVALID_OPERATION", f"Model has more than one {kind}!")
        return names[0]
    if name not in names:
        raise status_error("HAILO_NOT_FOUND", f"{kind.capitalize()} {name} not found!")
    return name


class _StreamState:
    """InferModel::InferStream::Impl: the vstream and the user-side format chosen for it."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.format = HailoFormat(FormatType[spec.type], FormatOrder[spec.order])

    def frame_size(self) -> int:
        kind = self.format.type
        if kind == FormatType.AUTO:
            kind = FormatType[self.spec.type]
        return math.prod(self.spec.shape) * FORMAT_BYTES[kind]


class InferModel:
    """What to run and in which formats; `configure()` makes it runnable."""

    class InferStream:
        def __init__(self, state: _StreamState) -> None:
            self._state = state

        @property
        def name(self) -> str:
            return self._state.spec.name

        @property
        def shape(self) -> list[int]:
            return list(self._state.spec.shape)

        @property
        def format(self) -> HailoFormat:
            f = self._state.format
            return HailoFormat(f.type, f.order, f.flags)

        def set_format_type(self, type: FormatType) -> None:  # HailoRT's parameter name
            self._state.format.type = FormatType(type)

        def set_format_order(self, order: FormatOrder) -> None:
            self._state.format.order = FormatOrder(order)

        @property
        def quant_infos(self) -> list[QuantInfo]:
            return [QuantInfo()]

        @property
        def is_nms(self) -> bool:
            return False

    def __init__(self, spec: HefSpec, hef_source: str | bytes, chip: ChipHandle,
                 scheduled: bool) -> None:
        self._spec = spec
        self._hef_path = hef_source
        self._hef: HEF | None = None
        self._chip = chip
        self._scheduled = scheduled
        self._batch_size = 0
        self._inputs = {s.name: _StreamState(s) for s in spec.inputs}
        self._outputs = {s.name: _StreamState(s) for s in spec.outputs}
        chip.ref()
        weakref.finalize(self, chip.unref)

    @property
    def hef(self) -> HEF:
        if self._hef is None:
            self._hef = HEF(self._hef_path)
        return self._hef

    def set_batch_size(self, batch_size: int) -> None:
        if not isinstance(batch_size, int) or not 0 <= batch_size <= 0xFFFF:
            raise TypeError(f"set_batch_size(): incompatible function arguments ({batch_size!r})")
        self._batch_size = batch_size

    def set_power_mode(self, power_mode: Any) -> None:
        return None

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    @property
    def inputs(self) -> list[InferModel.InferStream]:
        return [self.InferStream(s) for s in self._inputs.values()]

    @property
    def outputs(self) -> list[InferModel.InferStream]:
        return [self.InferStream(s) for s in self._outputs.values()]

    def input(self, name: str = "") -> InferModel.InferStream:
        return self.InferStream(self._inputs[_pick(list(self._inputs), name, "input")])

    def output(self, name: str = "") -> InferModel.InferStream:
        return self.InferStream(self._outputs[_pick(list(self._outputs), name, "output")])

    def configure(self) -> ConfiguredInferModel:
        faults = control.faults()
        if faults.device_lost:
            raise lost_error(faults.device_lost)
        streams = {**self._inputs, **self._outputs}
        record("configure", batch_size=self._batch_size,
               formats={n: s.format.type.name for n, s in streams.items()})
        return ConfiguredInferModel(self)


class _Slot:
    """ConfiguredInferModel::Bindings::InferStream::Impl: the buffer the chip will use."""

    def __init__(self, state: _StreamState) -> None:
        self.state = state
        self.view: np.ndarray | None = None
        self.swapped = False  # points at the wrapper's DMA buffer from the last job


class AsyncInferJob:
    """Hailo asynchronous inference job."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def wait(self, timeout_ms: int) -> None:
        if not self._job.done.wait(timeout_ms / 1000):
            record("job_wait_timeout", timeout_ms=timeout_ms)
            raise status_error("HAILO_TIMEOUT",
                               f"Waiting for async job to finish has failed with timeout "
                               f"({timeout_ms}ms)")


class ConfiguredInferModel:
    """Configured InferModel; use it as a context manager, keep it in the process that made it."""

    class Bindings:
        """One asynchronous infer request: the input and output buffers of ONE frame."""

        class InferStream:
            def __init__(self, slot: _Slot) -> None:
                self._slot = slot
                self._buffer: np.ndarray | None = None

            def set_buffer(self, buffer: np.ndarray) -> None:
                if not buffer.flags.c_contiguous:
                    raise HailoRTException("Buffer must be C_CONTIGUOUS")
                self._slot.view = buffer
                self._slot.swapped = False
                self._buffer = buffer

            def get_buffer(self, tf_format: bool | None = False) -> np.ndarray | None:
                return self._buffer

        def __init__(self, inputs: dict[str, _Slot], outputs: dict[str, _Slot]) -> None:
            self._in_slots = inputs
            self._out_slots = outputs
            self._inputs: dict[str, ConfiguredInferModel.Bindings.InferStream] = {}
            self._outputs: dict[str, ConfiguredInferModel.Bindings.InferStream] = {}

        def input(self, name: str = "") -> ConfiguredInferModel.Bindings.InferStream:
            name = _pick(list(self._in_slots), name, "input")
            if name not in self._inputs:
                self._inputs[name] = self.InferStream(self._in_slots[name])
            return self._inputs[name]

        def output(self, name: str = "") -> ConfiguredInferModel.Bindings.InferStream:
            name = _pick(list(self._out_slots), name, "output")
            if name not in self._outputs:
                self._outputs[name] = self.InferStream(self._out_slots[name])
            return self._outputs[name]

        def get(self) -> ConfiguredInferModel.Bindings:
            return self

    def __init__(self, infer_model: InferModel) -> None:
        self._infer_model = infer_model
        self._input_names = infer_model.input_names
        self._output_names = infer_model.output_names
        self._batch_size = infer_model._batch_size or 1
        self._configured_infer_model: Chip | None = Chip(infer_model._spec)
        self._activated = False

    def __enter__(self) -> ConfiguredInferModel:
        return self

    def __exit__(self, *args: object) -> None:
        # HailoRT drops the C++ object here; its destructor shuts the pipeline down.
        if self._configured_infer_model is not None:
            self._configured_infer_model.shutdown()
        self._configured_infer_model = None

    def _chip(self) -> tuple[Chip, Faults]:
        chip = self._configured_infer_model
        if chip is None:
            raise AttributeError("'NoneType' object has no attribute 'run_async'")
        if chip.aborted is not None:
            raise status_error("HAILO_STREAM_ABORT", "pipeline was shut down")
        faults = control.faults()
        if faults.device_lost:
            chip.aborted = lost_error(faults.device_lost)
            raise lost_error(faults.device_lost)
        return chip, faults

    def activate(self) -> None:
        if self._infer_model._scheduled:
            raise status_error("HAILO_INVALID_OPERATION", "activate() is invalid with a scheduler")
        self._activated = True

    def deactivate(self) -> None:
        self._activated = False

    def create_bindings(self, input_buffers: dict[str, np.ndarray] | None = None,
                        output_buffers: dict[str, np.ndarray] | None = None
                        ) -> ConfiguredInferModel.Bindings:
        model = self._infer_model
        bindings = self.Bindings({n: _Slot(s) for n, s in model._inputs.items()},
                                 {n: _Slot(s) for n, s in model._outputs.items()})
        for name, buffer in (input_buffers or {}).items():
            bindings.input(name).set_buffer(buffer)
        for name, buffer in (output_buffers or {}).items():
            bindings.output(name).set_buffer(buffer)
        return bindings

    def get_async_queue_size(self) -> int:
        return self._queue_size(self._chip()[1])

    def _queue_size(self, faults: Faults) -> int:
        configured = faults.async_queue_size
        return configured if configured is not None else max(2, 2 * self._batch_size)

    def wait_for_async_ready(self, timeout_ms: int = 1000, frames_count: int = 1) -> None:
        chip, faults = self._chip()
        if not chip.wait_ready(frames_count, self._queue_size(faults), timeout_ms / 1000):
            raise status_error("HAILO_TIMEOUT", "Got timeout in `wait_for_async_ready`")
        if chip.aborted is not None:
            raise status_error("HAILO_STREAM_ABORT", "pipeline was shut down")

    def run(self, bindings: list[ConfiguredInferModel.Bindings], timeout: int) -> None:
        self.run_async(bindings).wait(timeout)

    def run_async(self, bindings: list[ConfiguredInferModel.Bindings],
                  callback: Callable[..., None] | None = None) -> AsyncInferJob:
        chip, faults = self._chip()
        if not self._infer_model._scheduled and not self._activated:
            raise status_error("HAILO_NETWORK_GROUP_NOT_ACTIVATED", "no scheduler, not activated")
        if chip.inflight + len(bindings) > self._queue_size(faults):
            chip.shutdown()
            raise HailoRTException("libhailort failed with error: 82 (HAILO_QUEUE_IS_FULL)")
        frames = [self._frame(chip, b) for b in bindings]
        fate = "ok"
        if faults.hang or control.take("timeouts_next_n"):
            fate = "hang"
        elif control.take("fail_next_n"):
            fate = "fail"
        record("run_async", frames=len(frames), fate=fate)

        def done(error: HailoRTException | None) -> None:
            if callback is not None:
                callback(completion_info=AsyncInferCompletionInfo(error))

        job = Job(frames, done, fate)
        chip.submit(job)
        return AsyncInferJob(job)

    def _frame(self, chip: Chip, b: ConfiguredInferModel.Bindings) -> Frame:
        outputs: list[OutputCopy] = []
        for name, slot in b._out_slots.items():
            if slot.view is None:
                raise status_error("HAILO_INVALID_OPERATION",
                                   f"Trying to get buffer as view for '{name}', while it is not "
                                   "configured as view")
        for kind, slots in (("Input", b._in_slots), ("Output", b._out_slots)):
            for name, slot in slots.items():
                self._validate(chip, kind, name, slot)
        for name, slot in b._out_slots.items():
            assert slot.view is not None
            if slot.swapped:
                log.warning("double: Bindings output %r reused without set_buffer(); on HailoRT "
                            "the results go to a freed DMA buffer, not to your array", name)
            aligned = np.empty_like(slot.view)
            outputs.append(OutputCopy(name, aligned, slot.view))
            slot.view, slot.swapped = aligned, True
        inputs = {name: slot.view for name, slot in b._in_slots.items() if slot.view is not None}
        return Frame(inputs, outputs)

    def _validate(self, chip: Chip, kind: str, name: str, slot: _Slot) -> None:
        if slot.view is None:
            chip.shutdown()
            raise status_error("HAILO_NOT_FOUND", f"Couldnt find input buffer for '{name}'")
        want = slot.state.frame_size()
        if slot.view.nbytes != want:
            chip.shutdown()
            raise status_error("HAILO_INVALID_OPERATION",
                               f"{kind} buffer size {slot.view.nbytes} is different than "
                               f"expected {want} for {kind.lower()} '{name}'")
        shape = slot.state.spec.shape
        if slot.state.format.type != FormatType.FLOAT32:
            chip.shutdown()
            raise status_error("HAILO_INVALID_OPERATION",
                               f"double: {name} is {slot.state.format.type.name}; only FLOAT32 "
                               "streams are emulated")
        if slot.view.dtype != np.float32 or tuple(slot.view.shape) != tuple(shape):
            chip.shutdown()
            raise status_error("HAILO_INVALID_OPERATION",
                               f"double (stricter than HailoRT): {name} wants float32 {shape}, "
                               f"got {slot.view.dtype} {slot.view.shape}")

    def set_scheduler_timeout(self, timeout_ms: int) -> None:
        return None

    def set_scheduler_threshold(self, threshold: int) -> None:
        return None

    def set_scheduler_priority(self, priority: int) -> None:
        return None

    def shutdown(self) -> None:
        chip = self._configured_infer_model
        if chip is None:
            raise AttributeError("'NoneType' object has no attribute 'shutdown'")
        record("shutdown")
        chip.shutdown()
