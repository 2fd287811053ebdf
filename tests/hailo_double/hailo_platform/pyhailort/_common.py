"""Exceptions, enums and small value types, named as in HailoRT's `pyhailort.py` (4.x).

HailoRTException
 ├── HailoRTTimeout                       HAILO_TIMEOUT (4)
 ├── HailoRTStreamAborted                 HAILO_STREAM_ABORT (63)
 ├── HailoRTStreamAbortedByUser
 ├── HailoRTInvalidOperationException     HAILO_INVALID_OPERATION (6)
 ├── HailoRTInvalidArgumentException      HAILO_INVALID_ARGUMENT (2)
 ├── HailoRTNotFoundException             HAILO_NOT_FOUND (61)
 ├── HailoRTInvalidHEFException           HAILO_INVALID_HEF (26)
 ├── HailoRTHEFNotCompatibleWithDevice    HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE (93)
 ├── HailoRTDriverOperationFailedException  HAILO_DRIVER_OPERATION_FAILED (36)
 ├── HailoRTNetworkGroupNotActivatedException  HAILO_NETWORK_GROUP_NOT_ACTIVATED (69)
 └── HailoCommunicationClosedException    HAILO_COMMUNICATION_CLOSED (62)
Any other status is a plain HailoRTException "libhailort failed with error: N (NAME)".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class HailoRTException(Exception):
    pass


class HailoRTTimeout(HailoRTException):
    pass


class HailoRTStreamAborted(HailoRTException):
    pass


class HailoRTStreamAbortedByUser(HailoRTException):
    pass


class HailoRTInvalidOperationException(HailoRTException):
    pass


class HailoRTInvalidArgumentException(HailoRTException):
    pass


class HailoRTNotFoundException(HailoRTException):
    pass


class HailoRTInvalidHEFException(HailoRTException):
    pass


class HailoRTHEFNotCompatibleWithDevice(HailoRTException):
    pass


class HailoRTDriverOperationFailedException(HailoRTException):
    pass


HailoRTPCIeDriverException = HailoRTDriverOperationFailedException


class HailoRTNetworkGroupNotActivatedException(HailoRTException):
    pass


class HailoCommunicationClosedException(HailoRTException):
    pass


STATUS_CODES = {
    "HAILO_INVALID_ARGUMENT": 2,
    "HAILO_TIMEOUT": 4,
    "HAILO_INVALID_OPERATION": 6,
    "HAILO_OPEN_FILE_FAILURE": 13,
    "HAILO_INVALID_HEF": 26,
    "HAILO_DRIVER_OPERATION_FAILED": 36,
    "HAILO_NOT_FOUND": 61,
    "HAILO_COMMUNICATION_CLOSED": 62,
    "HAILO_STREAM_ABORT": 63,
    "HAILO_NETWORK_GROUP_NOT_ACTIVATED": 69,
    "HAILO_DEVICE_IN_USE": 73,
    "HAILO_OUT_OF_PHYSICAL_DEVICES": 74,
    "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE": 93,
}

# Class and text per status, as ExceptionWrapper.create_exception_from_status builds them.
_BY_STATUS: dict[str, tuple[type[HailoRTException], str]] = {
    "HAILO_TIMEOUT": (
        HailoRTTimeout, "Received a timeout - hailort has failed because a timeout had occurred"),
    "HAILO_STREAM_ABORT": (HailoRTStreamAborted, "Stream was aborted"),
    "HAILO_INVALID_OPERATION": (
        HailoRTInvalidOperationException,
        "Invalid operation. See hailort.log for more information"),
    "HAILO_INVALID_ARGUMENT": (
        HailoRTInvalidArgumentException, "Invalid argument. See hailort.log for more information"),
    "HAILO_NOT_FOUND": (
        HailoRTNotFoundException, "Item not found. See hailort.log for more information"),
    "HAILO_INVALID_HEF": (
        HailoRTInvalidHEFException, "Invalid HEF. See hailort.log for more information"),
    "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE": (
        HailoRTHEFNotCompatibleWithDevice,
        "HEF file is not compatible with device. See hailort.log for more information"),
    "HAILO_DRIVER_OPERATION_FAILED": (
        HailoRTDriverOperationFailedException,
        "Failure in hailort driver ioctl. run 'dmesg | grep hailo' for more information"),
    "HAILO_COMMUNICATION_CLOSED": (
        HailoCommunicationClosedException,
        "Communication closed failure. Check server-client connection"),
    "HAILO_NETWORK_GROUP_NOT_ACTIVATED": (
        HailoRTNetworkGroupNotActivatedException, "Network group is not activated"),
}


def status_error(name: str, detail: str = "") -> HailoRTException:
    """The exception HailoRT raises for a libhailort status. `detail` stands in for the line
    HailoRT writes to hailort.log, which the real exception text does not carry."""
    cls, text = _BY_STATUS.get(
        name, (HailoRTException, f"libhailort failed with error: {STATUS_CODES[name]} ({name})"))
    exc = cls(text)
    exc.hailort_log = detail  # type: ignore[attr-defined]  # double only: what hailort.log says
    return exc


class FormatType(IntEnum):
    AUTO = 0
    UINT8 = 1
    UINT16 = 2
    FLOAT32 = 3


class FormatOrder(IntEnum):
    AUTO = 0
    NHWC = 1
    NHCW = 2
    FCR = 3
    F8CR = 4
    NHW = 5
    NC = 6
    BAYER_RGB = 7
    HAILO_NMS = 9
    RGB888 = 10
    NCHW = 11
    HAILO_NMS_WITH_BYTE_MASK = 21


class HailoSchedulingAlgorithm(IntEnum):
    NONE = 0
    ROUND_ROBIN = 1


class HailoStreamInterface(IntEnum):
    PCIe = 0
    INTEGRATED = 1
    ETH = 2
    MIPI = 3


class DeviceArchitectureTypes(IntEnum):
    HAILO8_A0 = 0
    HAILO8 = 1
    HAILO8L = 2
    HAILO15H = 3
    HAILO15L = 4
    HAILO15M = 5
    HAILO10H = 6

    def __str__(self) -> str:
        return self.name


FORMAT_BYTES = {FormatType.UINT8: 1, FormatType.UINT16: 2, FormatType.FLOAT32: 4}


@dataclass
class HailoFormat:
    type: FormatType
    order: FormatOrder
    flags: int = 0


@dataclass
class QuantInfo:
    qp_zp: float = 0.0
    qp_scale: float = 1.0
    limvals_min: float = 0.0
    limvals_max: float = 1.0


@dataclass
class VStreamInfo:
    """`hef.get_input_vstream_infos()` items: `shape` excludes the batch axis, per format order."""

    name: str
    network_name: str
    shape: tuple[int, ...]
    format: HailoFormat
    quant_info: QuantInfo = field(default_factory=QuantInfo)
    direction: str = "H2D"

    def __repr__(self) -> str:
        return f'VStreamInfo("{self.name}")'


@dataclass(frozen=True)
class TemperatureInfo:
    ts0_temperature: float
    ts1_temperature: float
    sample_count: int


@dataclass(frozen=True)
class BoardInformation:
    protocol_version: int
    firmware_version: str
    logger_version: int
    board_name: str
    is_release: bool
    device_architecture: DeviceArchitectureTypes
    serial_number: str
    part_number: str
    product_name: str


@dataclass
class VDeviceParams:
    device_count: int = 1
    scheduling_algorithm: HailoSchedulingAlgorithm = HailoSchedulingAlgorithm.NONE
    group_id: str = "UNIQUE"
    multi_process_service: bool = False


class AsyncInferCompletionInfo:
    """What a `run_async` callback receives (as `completion_info=`)."""

    def __init__(self, exception: HailoRTException | None) -> None:
        self._exception = exception

    @property
    def exception(self) -> HailoRTException | None:
        """The job's error, or None when it succeeded."""
        return self._exception
