"""Test double of HailoRT's Python package `hailo_platform` (see tests/hailo_double/README.md).

Like the real package, the top level re-exports only a few names; the exception classes
other than HailoRTException live in `hailo_platform.pyhailort.pyhailort`.
"""

from hailo_platform.pyhailort.pyhailort import (
    HEF,
    AsyncInferJob,
    Device,
    FormatOrder,
    FormatType,
    HailoRTException,
    HailoRTStreamAbortedByUser,
    HailoSchedulingAlgorithm,
    HailoStreamInterface,
    VDevice,
)

__version__ = "4.23.0"
IS_TEST_DOUBLE = True

__all__ = [
    "HEF", "AsyncInferJob", "Device", "FormatOrder", "FormatType", "HailoRTException",
    "HailoRTStreamAbortedByUser", "HailoSchedulingAlgorithm", "HailoStreamInterface",
    "VDevice",
]
