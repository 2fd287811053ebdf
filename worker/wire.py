"""The wire format: windows in (msgpack or JSON), results and errors out (msgpack or JSON).

A window is a map with `x` (WINDOW_LENGTH rows of CHANNELS numbers, as a list of lists or as
msgpack bin of little-endian float32 with `shape` and `dtype`), and optional `seq` and `ts`.
Every way a payload can be wrong maps to one error code (CONTRACT.md, "Error").
"""

from __future__ import annotations

import functools
import json
import math
import threading
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import numpy as np
import numpy.typing as npt

from worker.backends.base import Floats

ErrorCode = Literal[
    "decode_error",
    "invalid_shape",
    "invalid_dtype",
    "non_finite",
    "too_large",
    "overloaded",
    "inference_failed",
]
Encoding = Literal["msgpack", "json"]
NON_FINITE = "`x` holds NaN or infinity (or a number too big for float32)."

SEQ_MIN, SEQ_MAX = -(2**63), 2**63 - 1
SHOWN_MAX = 60  # characters of a sender's value an error detail quotes

CONTENT_TYPES: dict[str, str] = {"msgpack": "application/msgpack", "json": "application/json"}
BIN_DTYPE = "<f4"
_JSON_START = frozenset(b"{ \t\r\n")
_F4 = np.dtype("<f4")
# msgpack.packb builds a Packer, with a fresh 256 KiB buffer, on every call: most of the cost of
# packing a result. A Packer is not thread-safe, so each thread keeps its own.
_local = threading.local()


def _pack(doc: dict[str, Any]) -> bytes:
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(doc)
    return packed


class WireError(Exception):
    """A window that cannot be served; `code` and `detail` go into its error answer."""

    def __init__(self, code: ErrorCode, detail: str, seq: int | None = None) -> None:
        super().__init__(detail)
        self.code: ErrorCode = code
        self.detail = detail
        self.seq = seq


@dataclass(slots=True)
class Window:
    x: Floats
    """float32 `[WINDOW_LENGTH, CHANNELS]`."""
    seq: int | None = None
    ts: float | None = None


def shown(value: Any) -> str:
    """A sender's value, quoted in an error detail: short, whatever it is."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long for str(): Python's message names its own setting
        text = "a number too long to show"
    return text if len(text) <= SHOWN_MAX else f"{text[:SHOWN_MAX]}..."


def _parse(payload: bytes | bytearray, length: int, channels: int) -> Any:
    is_json = bool(payload[:1]) and payload[0] in _JSON_START
    try:
        if is_json:
            return json.loads(payload)
        return (_fast_lists(payload, length, channels)
                or msgpack.unpackb(payload, raw=False, strict_map_key=False))
    except RecursionError:
        raise WireError("decode_error", "The window is nested too deeply to decode.") from None
    except ValueError as exc:
        if "int_max_str_digits" in str(exc):
            raise WireError("decode_error", "The payload holds an integer too long to read "
                            "(over 4300 digits).") from None
        raise WireError("decode_error", f"The payload is not a valid {_kind(is_json)} map "
                        f"({shown(str(exc))[1:-1]}).") from None
    except Exception as exc:  # msgpack and json raise several types for garbage
        raise WireError("decode_error", f"The payload is not a valid {_kind(is_json)} map "
                        f"({shown(str(exc))[1:-1]}).") from None


def _kind(is_json: bool) -> str:
    return "JSON" if is_json else "msgpack"


# The lists form as msgpack writes it for a window of floats: an array of WINDOW_LENGTH rows,
# each an array of CHANNELS tagged floats (0xcb and 8 bytes, or 0xca and 4). Every element has the
# same width, so numpy reads the values straight from the payload, with no Python float made;
# anything else (ints among the floats, another shape, garbage) takes the general path, which
# gives the same answers and errors as it always did.
_FLOAT_TAGS = {0xCB: ">f8", 0xCA: ">f4"}


@functools.cache
def _headers(length: int, channels: int) -> tuple[bytes, bytes]:
    """msgpack's array headers for `length` rows and for a row of `channels`."""
    packer = msgpack.Packer()
    return packer.pack_array_header(length), packer.pack_array_header(channels)


@functools.cache
def _layout(length: int, channels: int, tag: int) -> tuple[bytes, np.dtype[Any], bytes, bytes]:
    """For rows of `channels` floats tagged `tag`: the outer array header, a numpy record of
    one row (its header bytes, then tag and value per channel), and the headers and tags every
    row must have."""
    outer, inner = _headers(length, channels)
    row = np.dtype([("h", "u1", (len(inner),)),
                    ("c", [("t", "u1"), ("v", _FLOAT_TAGS[tag])], (channels,))])
    return outer, row, inner * length, bytes([tag]) * (length * channels)


def _fast_lists(payload: bytes | bytearray, length: int, channels: int) -> dict[Any, Any] | None:
    """The window's map with `x` as a float32 array, when it is in the common lists form."""
    if not payload[:1] or payload[0] & 0xF0 != 0x80:  # a fixmap, as every window is
        return None
    outer, inner = _headers(length, channels)
    if payload.find(outer + inner, 0, 128) < 0:  # `x` comes early, if it is this form at all
        return None
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                    max_buffer_size=max(len(payload), 1024))
        unpacker.feed(payload)
        for _ in range(unpacker.read_map_header()):
            if unpacker.unpack() == "x":
                at = unpacker.tell()
                found = _float_rows(payload, at, length, channels)
                if found is None:
                    return None
                rows, end = found
                # The rest of the map, with nil where `x` was: a few small values to unpack.
                doc = msgpack.unpackb(bytes(payload[:at]) + b"\xc0" + bytes(payload[end:]),
                                      raw=False, strict_map_key=False)
                if not isinstance(doc, dict) or "x" not in doc or doc["x"] is not None:
                    return None
                doc["x"] = rows
                return doc
            unpacker.skip()
    except Exception:
        return None
    return None


def _float_rows(payload: bytes | bytearray, at: int, length: int,
                channels: int) -> tuple[Floats, int] | None:
    """`x` read from `payload[at:]` as float32 rows, and where it ends; None: not that form."""
    outer_len = 1 if length < 16 else 3 if length < 65536 else 5
    inner_len = 1 if channels < 16 else 3
    tag = payload[at + outer_len + inner_len] if len(payload) > at + outer_len + inner_len else 0
    if tag not in _FLOAT_TAGS:
        return None
    outer, row, headers, tags = _layout(length, channels, tag)
    start = at + len(outer)
    end = start + length * row.itemsize
    if payload[at:start] != outer or len(payload) < end:
        return None
    rows = np.frombuffer(payload, row, length, start)
    cells = rows["c"]
    if rows["h"].tobytes() != headers or cells["t"].tobytes() != tags:
        return None
    with np.errstate(over="ignore"):
        return cells["v"].astype(np.float32), end


def _optional_fields(doc: dict[Any, Any]) -> tuple[int | None, float | None]:
    seq = doc.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)
                            or not SEQ_MIN <= seq <= SEQ_MAX):
        # Not echoed: the answer could not carry it (msgpack stops at 64 bits).
        raise WireError("decode_error", "`seq` must be an integer in the signed 64-bit range.")
    ts = doc.get("ts")
    if ts is not None:
        try:
            ok = not isinstance(ts, bool) and isinstance(ts, int | float) and math.isfinite(ts)
        except OverflowError:  # an integer past a double's range
            ok = False
        if not ok:
            raise WireError("decode_error", "`ts` must be a finite number of seconds.", seq)
        ts = float(ts)
    return seq, ts


def _from_bin(doc: dict[Any, Any], x: bytes, length: int, channels: int, seq: int | None) -> Floats:
    if doc.get("dtype") != BIN_DTYPE:
        raise WireError(
            "invalid_dtype",
            f"A bin `x` needs `dtype` \"{BIN_DTYPE}\", got {shown(doc.get('dtype'))}.",
            seq,
        )
    shape = doc.get("shape")
    if not isinstance(shape, list | tuple) or list(shape) != [length, channels]:
        raise WireError(
            "invalid_shape", f"`shape` must be [{length}, {channels}], got {shown(shape)}.", seq
        )
    if len(x) != length * channels * 4:
        raise WireError(
            "invalid_shape",
            f"A bin `x` of shape [{length}, {channels}] needs {length * channels * 4} bytes, "
            f"got {len(x)}.",
            seq,
        )
    return np.frombuffer(x, dtype=_F4).reshape(length, channels)


def _from_lists(x: list[Any], length: int, channels: int, seq: int | None) -> Floats:
    if len(x) != length or not all(isinstance(row, list) and len(row) == channels for row in x):
        raise WireError(
            "invalid_shape", f"`x` must be {length} rows of {channels} numbers.", seq
        )
    try:
        arr = np.array(x)
        if arr.dtype.kind == "O":
            # JSON integers past 64 bits reach numpy as Python ints: numbers, only too big.
            arr = np.array([[_big_number(v) for v in row] for row in x])
    except (ValueError, TypeError, OverflowError):
        raise WireError("invalid_dtype", "`x` must hold only numbers.", seq) from None
    if arr.dtype.kind not in "iuf" or arr.shape != (length, channels):
        raise WireError("invalid_dtype", "`x` must hold only numbers.", seq)
    with np.errstate(over="ignore"):
        return arr.astype(np.float32)


def _big_number(value: Any) -> float:
    if not isinstance(value, int | float):
        raise TypeError(type(value).__name__)
    try:
        return float(value)
    except OverflowError:  # past a double as well: the non_finite check below says so
        return math.inf


def decode_window(payload: bytes | bytearray, length: int, channels: int, *,
                  check_finite: bool = True) -> Window:
    """Decode and validate one window. Raises WireError with the code that fits.

    `check_finite=False` leaves the `non_finite` check to the caller, who can make it once
    for a whole batch (`finite_rows`) at a fraction of the cost per window.
    """
    doc = _parse(payload, length, channels)
    if not isinstance(doc, dict):
        raise WireError("decode_error", f"A window must be a map, got {type(doc).__name__}.")
    seq, ts = _optional_fields(doc)
    if "x" not in doc:
        raise WireError("decode_error", "The window has no `x`.", seq)
    x = doc["x"]
    if isinstance(x, np.ndarray):  # the lists form, read by _fast_lists
        arr = x
    elif isinstance(x, bytes | bytearray):
        arr = _from_bin(doc, bytes(x), length, channels, seq)
    elif isinstance(x, list):
        arr = _from_lists(x, length, channels, seq)
    else:
        raise WireError(
            "invalid_shape",
            f"`x` must be a list of {length} rows or float32 bytes, got {type(x).__name__}.",
            seq,
        )
    if check_finite and not np.isfinite(arr).all():
        raise WireError("non_finite", NON_FINITE, seq)
    return Window(arr, seq, ts)


def finite_rows(batch: Floats) -> npt.NDArray[np.bool_]:
    """Which windows of `batch` (`[n, length, channels]`) hold only finite numbers."""
    return np.asarray(np.isfinite(batch.reshape(len(batch), -1)).all(axis=1))


def encode_window(x: Floats, *, seq: int | None = None, ts: float | None = None,
                  compact: bool = True) -> bytes:
    """A window as msgpack: the compact bin form, or a list of lists (sensors, tests)."""
    doc: dict[str, Any]
    if compact:
        arr = np.ascontiguousarray(x, dtype=_F4)
        doc = {"x": arr.tobytes(), "shape": list(arr.shape), "dtype": BIN_DTYPE}
    else:
        doc = {"x": np.asarray(x, dtype=np.float32).tolist()}
    if seq is not None:
        doc["seq"] = seq
    if ts is not None:
        doc["ts"] = ts
    return _pack(doc)


def encode(doc: dict[str, Any], encoding: Encoding) -> bytes:
    """A result, error or reply payload in RESULT_ENCODING."""
    if encoding == "json":
        return json.dumps(doc, separators=(",", ":")).encode()
    # Doubles, not use_single_float: `ts` is epoch seconds and float32 would blur it by minutes.
    return _pack(doc)


def decode(payload: bytes | bytearray) -> Any:
    """Read back a result or error, whichever encoding it came in (bridge, tools, tests)."""
    if payload[:1] and payload[0] in _JSON_START:
        return json.loads(payload)
    return msgpack.unpackb(payload, raw=False)


def error_doc(sensor_id: str, code: ErrorCode, detail: str, seq: int | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"sensor_id": sensor_id, "error": code, "detail": detail}
    if seq is not None:
        doc["seq"] = seq
    return doc
