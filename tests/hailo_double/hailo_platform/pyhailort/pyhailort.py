"""Test double of `hailo_platform.pyhailort.pyhailort` (HailoRT 4.x, the `hailo8` branch).

Same names and behaviour as the real module for the parts this project uses: VDevice, HEF,
InferModel / ConfiguredInferModel / Bindings / AsyncInferJob, Device.control (identify,
get_chip_temperature), the enums and the exception tree. The "chip" runs the ONNX model the
HEF names (see `hailo_platform._double`). Never installed; tests put tests/hailo_double first
on sys.path / PYTHONPATH.
"""

from hailo_platform.pyhailort._common import (
    FORMAT_BYTES,
    STATUS_CODES,
    AsyncInferCompletionInfo,
    BoardInformation,
    DeviceArchitectureTypes,
    FormatOrder,
    FormatType,
    HailoCommunicationClosedException,
    HailoFormat,
    HailoRTDriverOperationFailedException,
    HailoRTException,
    HailoRTHEFNotCompatibleWithDevice,
    HailoRTInvalidArgumentException,
    HailoRTInvalidHEFException,
    HailoRTInvalidOperationException,
    HailoRTNetworkGroupNotActivatedException,
    HailoRTNotFoundException,
    HailoRTPCIeDriverException,
    HailoRTStreamAborted,
    HailoRTStreamAbortedByUser,
    HailoRTTimeout,
    HailoSchedulingAlgorithm,
    HailoStreamInterface,
    QuantInfo,
    TemperatureInfo,
    VDeviceParams,
    VStreamInfo,
)
from hailo_platform.pyhailort._device import Control, Device, HailoRTStatusException, VDevice
from hailo_platform.pyhailort._hef import HEF
from hailo_platform.pyhailort._infer_model import AsyncInferJob, ConfiguredInferModel, InferModel

__all__ = [
    "FORMAT_BYTES", "HEF", "STATUS_CODES", "AsyncInferCompletionInfo", "AsyncInferJob",
    "BoardInformation", "ConfiguredInferModel", "Control", "Device", "DeviceArchitectureTypes",
    "FormatOrder", "FormatType", "HailoCommunicationClosedException", "HailoFormat",
    "HailoRTDriverOperationFailedException", "HailoRTException",
    "HailoRTHEFNotCompatibleWithDevice", "HailoRTInvalidArgumentException",
    "HailoRTInvalidHEFException", "HailoRTInvalidOperationException",
    "HailoRTNetworkGroupNotActivatedException", "HailoRTNotFoundException",
    "HailoRTPCIeDriverException", "HailoRTStatusException", "HailoRTStreamAborted",
    "HailoRTStreamAbortedByUser", "HailoRTTimeout", "HailoSchedulingAlgorithm",
    "HailoStreamInterface", "InferModel", "QuantInfo", "TemperatureInfo", "VDevice",
    "VDeviceParams", "VStreamInfo",
]
