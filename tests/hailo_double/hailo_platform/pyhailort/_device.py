"""`VDevice`, `Device` and its `Control`: opening the (pretend) chip, identity, temperature.

Ownership follows HailoRT: the chip stays open while the VDevice *or any InferModel made
from it* is alive, so a VDevice released while its InferModel is still referenced keeps
/dev/hailo0 busy (with HAILO_DOUBLE_DEVICE_LOCK set, a second open then fails with
HAILO_OUT_OF_PHYSICAL_DEVICES, status 74).
"""

from __future__ import annotations

import fcntl
import gc
import os
import threading
import time
from typing import Any, Literal

from hailo_platform._double.control import control, record
from hailo_platform._double.engine import lost_error
from hailo_platform.pyhailort._common import (
    BoardInformation,
    DeviceArchitectureTypes,
    HailoRTException,
    HailoRTInvalidOperationException,
    HailoSchedulingAlgorithm,
    TemperatureInfo,
    VDeviceParams,
    status_error,
)
from hailo_platform.pyhailort._hef import load_spec

DEVICE_ID = "0000:01:00.0"


class HailoRTStatusException(Exception):
    """`_pyhailort.HailoRTStatusException`: what the C++ layer raises where the Python layer
    forgot its ExceptionWrapper (e.g. `Device()`); NOT a HailoRTException. args[0] = status."""


class ChipHandle:
    """One open /dev/hailo0, shared by a VDevice and the InferModels made from it."""

    def __init__(self, arch: DeviceArchitectureTypes) -> None:
        self.arch = arch
        self._refs = 1
        self._lock = threading.Lock()
        self._fd: int | None = None
        path = os.environ.get("HAILO_DOUBLE_DEVICE_LOCK")
        if path:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                record("vdevice_open_failed", reason="busy")
                raise status_error("HAILO_OUT_OF_PHYSICAL_DEVICES",
                                   "device held elsewhere") from None
            self._fd = fd

    def ref(self) -> None:
        with self._lock:
            self._refs += 1

    def unref(self) -> None:
        with self._lock:
            self._refs -= 1
            closing = self._refs == 0
        if closing:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
            record("chip_closed")


class VDevice:
    """Hailo virtual device representation."""

    def __init__(self, params: VDeviceParams | None = None, *,
                 device_ids: list[str] | None = None) -> None:
        gc.collect()
        self._vdevice: ChipHandle | None = None
        self._params = params if params is not None else VDevice.create_params()
        self._creation_pid = os.getpid()
        faults = control.faults()
        if faults.open_hangs:
            record("vdevice_open_hangs")
            while faults.open_hangs:  # a wedged driver: open() returns when it is cleared
                time.sleep(0.05)
                faults = control.faults()
        if faults.open_fails or faults.device_lost:
            record("vdevice_open_failed", reason="no device")
            raise status_error("HAILO_OUT_OF_PHYSICAL_DEVICES", "no Hailo device found")
        self._vdevice = ChipHandle(DeviceArchitectureTypes[faults.arch])
        record("vdevice_open", scheduling=self._params.scheduling_algorithm.name)

    @staticmethod
    def create_params() -> VDeviceParams:
        return VDeviceParams()

    def __enter__(self) -> VDevice:
        return self

    def __exit__(self, *args: object) -> Literal[False]:
        self.release()
        return False

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        handle: ChipHandle | None = getattr(self, "_vdevice", None)
        if handle is not None:
            self._vdevice = None
            record("vdevice_release")
            handle.unref()

    def get_physical_devices_ids(self) -> list[str]:
        if self._vdevice is None:
            raise AttributeError("'NoneType' object has no attribute 'get_physical_devices_ids'")
        return [DEVICE_ID]

    def get_physical_devices(self) -> list[Device]:
        return [Device(dev_id) for dev_id in self.get_physical_devices_ids()]

    def create_infer_model(self, hef_source: str | bytes, name: str = "") -> Any:
        from hailo_platform.pyhailort._infer_model import InferModel

        if os.getpid() != self._creation_pid:
            raise HailoRTException(
                "InferModel can be created only from the process VDevice was created in.")
        if self._vdevice is None:
            raise AttributeError(
                "'NoneType' object has no attribute 'create_infer_model_from_file'")
        if not isinstance(hef_source, (str, bytes)):
            raise TypeError("create_infer_model_from_file(): incompatible function arguments "
                            f"(got {type(hef_source).__name__}; pass str or bytes)")
        faults = control.faults()
        if faults.device_lost:
            raise lost_error(faults.device_lost)
        spec = load_spec(hef_source)
        if spec.hw_arch == "hailo8" and self._vdevice.arch == DeviceArchitectureTypes.HAILO8L:
            raise status_error("HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE",
                               "HEF compiled for hailo8, device is HAILO8L")
        scheduled = self._params.scheduling_algorithm != HailoSchedulingAlgorithm.NONE
        return InferModel(spec, hef_source, self._vdevice, scheduled)


class Control:
    """Device.control: identity and temperature (a small part of HailoRT's control API)."""

    def __init__(self, device: Device) -> None:
        self._device = device
        self._identify_info = self.identify()

    def _check(self) -> None:
        if self._device._released:
            raise HailoRTInvalidOperationException(
                "The device in use has been released. This can happen if 'device.release()' "
                "has been called, or one-liner usage of control 'Device().control.XX()'")
        faults = control.faults()
        if faults.device_lost:
            raise lost_error(faults.device_lost)

    @property
    def device_id(self) -> str:
        return self._device.device_id

    def identify(self) -> BoardInformation:
        self._check()
        arch = DeviceArchitectureTypes[control.faults().arch]
        return BoardInformation(
            protocol_version=2, firmware_version="4.23.0 (release,app)", logger_version=0,
            board_name="Hailo-8 test double", is_release=True, device_architecture=arch,
            serial_number="HAILO-DOUBLE-0001", part_number="DOUBLE",
            product_name="HAILO test double")

    def get_chip_temperature(self) -> TemperatureInfo:
        self._check()
        t = control.faults().temperature_c
        record("temperature")
        return TemperatureInfo(ts0_temperature=t, ts1_temperature=t, sample_count=1)


class Device:
    """Hailo device object representation (for inference use VDevice)."""

    @classmethod
    def scan(cls) -> list[str]:
        faults = control.faults()
        return [] if faults.open_fails or faults.device_lost else [DEVICE_ID]

    def __init__(self, device_id: str | None = None) -> None:
        gc.collect()
        self._released = True
        if device_id is None:
            ids = Device.scan()
            if not ids:
                raise HailoRTException("HailoRT device not found in the system")
            device_id = ids[0]
        if device_id != DEVICE_ID or not Device.scan():
            raise HailoRTStatusException(61)
        self._device_id = device_id
        self._released = False
        self._control_object = Control(self)

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *args: object) -> Literal[False]:
        self.release()
        return False

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        self._released = True

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def control(self) -> Control:
        return self._control_object
