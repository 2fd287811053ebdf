"""Hypothesis strategies for malformed windows, each with the error it must be answered with.

The expected code is decided by how the payload is built, not by asking the worker's decoder:
a truncated map can only be a `decode_error`, a bin of the wrong length only `invalid_shape`.
Where the contract gives the seq back (the payload decoded far enough), the case says which.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import msgpack
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from reliability.accounting import Expect

SHAPE = [100, 9]
CELLS = 900
Case = tuple[bytes, Expect]
# Comfortably below the recursion limits of msgpack's C unpacker (1024) and of `json` in a
# thread, and comfortably above them: the cases in between depend on the stack in use.
SHALLOW_MSGPACK, DEEP_MSGPACK = (1, 900), (1100, 20_000)
SHALLOW_JSON, DEEP_JSON = (1, 400), (2_000, 30_000)  # 60 KB at most: under the default limit

seqs = st.integers(min_value=-(2**31), max_value=2**40)
INTS = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry


def pack(doc: Any) -> bytes:
    return bytes(msgpack.packb(doc, use_bin_type=True))


def _f4(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((100, 9)).astype("<f4")


def _has_x(payload: bytes) -> bool:
    """Could these bytes be a window at all? (Random bytes almost never are.)"""
    try:
        doc = (json.loads(payload) if payload[:1] and payload[0] in b"{ \t\r\n"
               else msgpack.unpackb(payload, raw=False, strict_map_key=False))
    except Exception:
        return False
    return isinstance(doc, dict) and "x" in doc


@st.composite
def random_bytes(draw: st.DrawFn) -> Case:
    payload = draw(st.one_of(st.binary(max_size=512),
                             st.binary(min_size=1, max_size=64).map(lambda b: b"{" + b)))
    assume(not _has_x(payload))
    return payload, Expect.error("decode_error", any_seq=True)


@st.composite
def truncated(draw: st.DrawFn) -> Case:
    seq = draw(seqs)
    x = _f4(draw(st.integers(0, 50)))
    form = draw(st.sampled_from(["bin", "lists", "json"]))
    if form == "json":
        full = json.dumps({"x": x.tolist(), "seq": seq}).encode()
    else:
        full = pack({"x": x.tobytes() if form == "bin" else x.tolist(), "shape": SHAPE,
                     "dtype": "<f4", "seq": seq})
    cut = draw(st.integers(0, len(full) - 1))
    return full[:cut], Expect.error("decode_error")


@st.composite
def deeply_nested(draw: st.DrawFn) -> Case:
    seq = draw(seqs)
    kind = draw(st.sampled_from(["array", "map", "x-shallow", "x-deep", "json-shallow",
                                 "json-deep"]))
    if kind == "array":
        return b"\x91" * draw(st.integers(1, 20_000)) + b"\xc0", Expect.error("decode_error")
    if kind == "map":
        return b"\x81\xa1a" * draw(st.integers(1, 20_000)) + b"\xc0", Expect.error("decode_error")
    if kind.startswith("x-"):
        depth = draw(st.integers(*(SHALLOW_MSGPACK if kind == "x-shallow" else DEEP_MSGPACK)))
        # {"seq": seq, "x": [[[...nil...]]]}: a map of two, seq first.
        payload = b"\x82" + pack({"seq": seq})[1:] + b"\xa1x" + b"\x91" * depth + b"\xc0"
        shallow = kind == "x-shallow"
    else:
        depth = draw(st.integers(*(SHALLOW_JSON if kind == "json-shallow" else DEEP_JSON)))
        payload = f'{{"seq": {seq}, "x": {"[" * depth}{"]" * depth}}}'.encode()
        shallow = kind == "json-shallow"
    return payload, (Expect.error("invalid_shape", seq) if shallow
                     else Expect.error("decode_error"))


@st.composite
def huge_declared_length(draw: st.DrawFn) -> Case:
    """A header promising far more than follows: nothing may be allocated for it."""
    n = draw(st.integers(70_000, 2**32 - 1))
    header = draw(st.sampled_from([
        b"\xc6" + struct.pack(">I", n),            # bin 32
        b"\xdb" + struct.pack(">I", n),            # str 32
        b"\xdd" + struct.pack(">I", n),            # array 32
        b"\xdf" + struct.pack(">I", n),            # map 32
        b"\xc9" + struct.pack(">I", n) + b"\x05",  # ext 32
        b"\xc5\xff\xff",                           # bin 16, 65535 bytes
    ]))
    body = header + draw(st.binary(max_size=64))
    if draw(st.booleans()):
        body = b"\x82" + pack({"seq": draw(seqs)})[1:] + b"\xa1x" + body
    return body, Expect.error("decode_error")


NOT_NUMBERS = st.one_of(st.text(max_size=8), st.none(), st.binary(max_size=4),
                        st.lists(st.integers(0, 3), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2))


@st.composite
def wrong_types(draw: st.DrawFn) -> Case:
    seq = draw(seqs)
    x = _f4(draw(st.integers(0, 50)))
    kind = draw(st.sampled_from(["x-scalar", "rows", "cells", "bools", "seq", "ts", "dtype",
                                 "shape", "top-level"]))
    if kind == "x-scalar":  # x that is neither a list nor bytes
        value = draw(st.one_of(st.text(max_size=20), INTS,
                               st.floats(), st.booleans(), st.none(),
                               st.dictionaries(st.text(max_size=4), INTS, max_size=3)))
        return pack({"x": value, "seq": seq}), Expect.error("invalid_shape", seq)
    if kind == "rows":  # a list of lists, but not 100 rows of 9
        if draw(st.booleans()):
            rows = [[0.5] * 9 for _ in range(draw(st.integers(0, 140).filter(lambda n: n != 100)))]
        else:
            rows = x.tolist()
            rows[draw(st.integers(0, 99))] = [0.5] * draw(st.integers(0, 12).filter(
                lambda n: n != 9))
        return pack({"x": rows, "seq": seq}), Expect.error("invalid_shape", seq)
    if kind == "cells":  # 100 x 9, but some cells are not numbers
        rows = x.tolist()
        for _ in range(draw(st.integers(1, 5))):
            rows[draw(st.integers(0, 99))][draw(st.integers(0, 8))] = draw(NOT_NUMBERS)
        return pack({"x": rows, "seq": seq}), Expect.error("invalid_dtype", seq)
    if kind == "bools":
        return pack({"x": [[True] * 9] * 100, "seq": seq}), Expect.error("invalid_dtype", seq)
    bad: Any
    if kind == "seq":  # a seq that is not an integer: nothing to echo
        bad = draw(st.one_of(st.text(max_size=8), st.floats(), st.booleans(),
                             st.lists(INTS, max_size=2)))
        return pack({"x": x.tobytes(), "shape": SHAPE, "dtype": "<f4", "seq": bad}), \
            Expect.error("decode_error")
    if kind == "ts":
        bad = draw(st.one_of(st.text(max_size=8), st.booleans(), st.just(math.nan),
                             st.just(math.inf), st.lists(INTS, max_size=2)))
        return pack({"x": x.tobytes(), "shape": SHAPE, "dtype": "<f4", "seq": seq, "ts": bad}), \
            Expect.error("decode_error", seq)
    if kind == "dtype":
        bad = draw(st.one_of(st.sampled_from(["<f8", ">f4", "float32", "f4", "<i4", ""]),
                             INTS, st.none()))
        return pack({"x": x.tobytes(), "shape": SHAPE, "dtype": bad, "seq": seq}), \
            Expect.error("invalid_dtype", seq)
    if kind == "shape":
        bad = draw(st.one_of(
            st.lists(st.integers(0, 1000), max_size=4).filter(lambda s: s != SHAPE),
            st.text(max_size=6), INTS, st.none()))
        return pack({"x": x.tobytes(), "shape": bad, "dtype": "<f4", "seq": seq}), \
            Expect.error("invalid_shape", seq)
    value = draw(st.one_of(INTS, st.text(max_size=20), st.none(),
                           st.lists(INTS, max_size=4), st.floats(), st.booleans()))
    return pack(value), Expect.error("decode_error")


@st.composite
def not_finite(draw: st.DrawFn) -> Case:
    seq = draw(seqs)
    x = _f4(draw(st.integers(0, 50)))
    bad = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -3.5e38, 1e308]))
    form = draw(st.sampled_from(["bin", "lists", "json", "json-int"]))
    cells = [(draw(st.integers(0, 99)), draw(st.integers(0, 8)))
             for _ in range(draw(st.integers(1, 4)))]
    if form == "bin":
        x64 = x.astype(np.float64)
        for r, c in cells:
            x64[r, c] = bad
        with np.errstate(over="ignore"):
            raw = x64.astype("<f4").tobytes()
        return pack({"x": raw, "shape": SHAPE, "dtype": "<f4", "seq": seq}), \
            Expect.error("non_finite", seq)
    rows: list[list[Any]] = x.tolist()
    for r, c in cells:
        rows[r][c] = bad
    if form == "lists":
        return pack({"x": rows, "seq": seq}), Expect.error("non_finite", seq)
    if form == "json-int":  # an integer too big for float32 (or for a double) is not finite
        for r, c in cells:
            rows[r][c] = 10 ** draw(st.integers(39, 400))
    # json.dumps writes NaN / Infinity, which Python's json (and so the worker) reads back.
    return json.dumps({"x": rows, "seq": seq}).encode(), Expect.error("non_finite", seq)


def oversized(limit: int) -> st.SearchStrategy[Case]:
    """Bins of the wrong size, and payloads over MAX_PAYLOAD_BYTES (`limit`)."""

    @st.composite
    def build(draw: st.DrawFn) -> Case:
        seq = draw(seqs)
        if draw(st.booleans()):
            n = draw(st.integers(0, limit - 200).filter(lambda n: n != CELLS * 4))
            return pack({"x": bytes(n), "shape": SHAPE, "dtype": "<f4", "seq": seq}), \
                Expect.error("invalid_shape", seq)
        n = draw(st.integers(limit + 1, 3 * limit))
        return pack({"x": bytes(n), "shape": SHAPE, "dtype": "<f4", "seq": seq}), \
            Expect.error("too_large")

    return build()


def malformed(limit: int) -> st.SearchStrategy[Case]:
    """Any of the above; only `too_large` cases exceed `limit` (MAX_PAYLOAD_BYTES)."""
    fits = st.one_of(random_bytes(), truncated(), deeply_nested(), huge_declared_length(),
                     wrong_types(), not_finite()).filter(lambda case: len(case[0]) <= limit)
    return st.one_of(fits, oversized(limit))
