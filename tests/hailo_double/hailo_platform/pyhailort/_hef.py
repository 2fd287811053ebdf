"""`HEF`: reads the double's HEF file on the host, no device needed (as HailoRT's does)."""

from __future__ import annotations

from pathlib import Path

from hailo_platform._double import hef_format
from hailo_platform.pyhailort._common import (
    FormatOrder,
    FormatType,
    HailoFormat,
    VStreamInfo,
    status_error,
)


def load_spec(hef_source: str | bytes) -> hef_format.HefSpec:
    """Parse a HEF given as a path (str) or as its bytes, raising what HailoRT raises."""
    if isinstance(hef_source, bytes):
        data = hef_source
    elif isinstance(hef_source, str):
        try:
            data = Path(hef_source).read_bytes()
        except OSError as exc:
            raise status_error("HAILO_OPEN_FILE_FAILURE", str(exc)) from None
    else:
        raise ValueError("HEF can only be created from a file path (str) or a buffer (bytes)")
    try:
        return hef_format.loads(data)
    except ValueError as exc:
        raise status_error("HAILO_INVALID_HEF", str(exc)) from None


def vstream_info(s: hef_format.StreamSpec, network: str, direction: str) -> VStreamInfo:
    return VStreamInfo(name=s.name, network_name=f"{network}/{network}", shape=s.shape,
                       format=HailoFormat(FormatType[s.type], FormatOrder[s.order]),
                       direction=direction)


class HEF:
    """Python representation of the Hailo Executable Format (double)."""

    def __init__(self, hef_source: str | bytes) -> None:
        self._spec = load_spec(hef_source)
        self._path = hef_source if isinstance(hef_source, str) else None

    @property
    def path(self) -> str | None:
        return self._path

    def get_network_group_names(self) -> list[str]:
        return [self._spec.network_group]

    def get_networks_names(self, network_group_name: str | None = None) -> list[str]:
        ng = self._spec.network_group
        return [f"{ng}/{ng}"]

    def get_input_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return [vstream_info(s, self._spec.network_group, "H2D") for s in self._spec.inputs]

    def get_output_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return [vstream_info(s, self._spec.network_group, "D2H") for s in self._spec.outputs]

    def get_all_vstream_infos(self, name: str | None = None) -> list[VStreamInfo]:
        return self.get_input_vstream_infos(name) + self.get_output_vstream_infos(name)

    def get_sorted_output_names(self, network_group_name: str | None = None) -> list[str]:
        return [s.name for s in self._spec.outputs]
