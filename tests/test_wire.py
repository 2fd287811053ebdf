"""The wire format: every window form decodes the same, every bad payload gets its code."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from worker.wire import WireError, decode_window, encode, encode_window

L, C = 100, 9
X = np.random.default_rng(1).standard_normal((L, C)).astype(np.float32)


def test_bin_lists_and_json_decode_to_the_same_array() -> None:
    compact = decode_window(encode_window(X, seq=4, ts=1.25), L, C)
    lists = decode_window(encode_window(X, seq=4, ts=1.25, compact=False), L, C)
    as_json = decode_window(json.dumps({"x": X.tolist(), "seq": 4, "ts": 1.25}).encode(), L, C)
    for w in (compact, lists, as_json):
        assert w.x.dtype == np.float32 and w.x.shape == (L, C)
        np.testing.assert_array_equal(w.x, X)
        assert (w.seq, w.ts) == (4, 1.25)


def test_seed_body_of_zeros_is_a_valid_window() -> None:
    w = decode_window(json.dumps({"x": [[0.0] * 9 for _ in range(100)]}).encode(), L, C)
    assert not w.x.any() and w.seq is None


def _bin(**over: object) -> bytes:
    doc: dict[str, object] = {"x": X.tobytes(), "shape": [L, C], "dtype": "<f4", "seq": 9}
    doc.update(over)
    return msgpack.packb(doc)  # type: ignore[no-any-return]


NAN = X.copy()
NAN[3, 3] = np.nan
INF = X.copy()
INF[0, 0] = np.inf


@pytest.mark.parametrize(
    ("payload", "code", "seq"),
    [
        (b"\xc1\xff\x00garbage", "decode_error", None),
        (_bin()[:50], "decode_error", None),
        (b"", "decode_error", None),
        (msgpack.packb([1, 2, 3]), "decode_error", None),
        (msgpack.packb({"seq": 5}), "decode_error", 5),
        (msgpack.packb({"x": [[0.0] * 9] * 100, "seq": "five"}), "decode_error", None),
        (msgpack.packb({"x": [[0.0] * 9] * 100, "seq": 2, "ts": "now"}), "decode_error", 2),
        (b"{not json", "decode_error", None),
        (b"[" * 5000 + b"]" * 5000, "decode_error", None),
        (b"\x91" * 5000 + b"\x90", "decode_error", None),
        (msgpack.packb({"x": [[0.0] * 9] * 99, "seq": 1}), "invalid_shape", 1),
        (msgpack.packb({"x": [[0.0] * 8] * 100, "seq": 1}), "invalid_shape", 1),
        (msgpack.packb({"x": [[[0.0]] * 9] * 100, "seq": 1}), "invalid_dtype", 1),
        (msgpack.packb({"x": "abc", "seq": 1}), "invalid_shape", 1),
        (msgpack.packb({"x": 3.0, "seq": 1}), "invalid_shape", 1),
        (msgpack.packb({"x": [["a"] * 9] * 100, "seq": 1}), "invalid_dtype", 1),
        (msgpack.packb({"x": [[None] * 9] * 100, "seq": 1}), "invalid_dtype", 1),
        (msgpack.packb({"x": [[True] * 9] * 100, "seq": 1}), "invalid_dtype", 1),
        (_bin(shape=[50, 18]), "invalid_shape", 9),
        (_bin(x=X.tobytes()[:-4]), "invalid_shape", 9),
        (_bin(dtype="<f8"), "invalid_dtype", 9),
        (_bin(dtype=None), "invalid_dtype", 9),
        (_bin(x=NAN.tobytes()), "non_finite", 9),
        (_bin(x=INF.tobytes()), "non_finite", 9),
        (msgpack.packb({"x": [[1e39] * 9] * 100, "seq": 1}), "non_finite", 1),
        (b'{"x": [[NaN, 0,0,0,0,0,0,0,0]], "seq": 3}', "invalid_shape", 3),
    ],
)
def test_bad_windows_get_their_code(payload: bytes, code: str, seq: int | None) -> None:
    with pytest.raises(WireError) as info:
        decode_window(payload, L, C)
    assert info.value.code == code
    assert info.value.seq == seq
    assert info.value.detail.endswith(".") or info.value.detail.endswith(")")


def test_encodings_round_trip() -> None:
    doc = {"sensor_id": "s", "latent": [0.5] * 64, "ts": 1732800000.123456}
    assert json.loads(encode(doc, "json")) == doc
    assert msgpack.unpackb(encode(doc, "msgpack")) == doc  # ts keeps its full precision
