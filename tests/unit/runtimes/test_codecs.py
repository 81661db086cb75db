"""V2 tensors <-> numpy for every datatype, in JSON and raw form; shapes checked against the data."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import DATATYPE_SIZES
from llmserve.runtimes.codecs import datatype_of, decode_json, decode_raw, encode_json, encode_raw

NUMERIC = {
    "BOOL": [True, False, True, True, False, True],
    "UINT8": [0, 1, 2, 3, 254, 255],
    "UINT16": [0, 1, 2, 3, 4, 65535],
    "UINT32": [0, 1, 2, 3, 4, 2**32 - 1],
    "UINT64": [0, 1, 2, 3, 4, 2**64 - 1],
    "INT8": [-128, -1, 0, 1, 2, 127],
    "INT16": [-(2**15), -1, 0, 1, 2, 2**15 - 1],
    "INT32": [-(2**31), -1, 0, 1, 2, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 1, 2, 2**63 - 1],
    "FP16": [0.5, -1.0, 2.0, 65504.0, 0.0, 1.5],
    "FP32": [0.5, -1.25, 3.0e38, 1e-30, 0.0, 1.5],
    "FP64": [0.5, -1.25, 1e300, 1e-300, 0.0, 1.5],
}


def test_every_spec_datatype_is_covered() -> None:
    assert set(NUMERIC) | {"BYTES", "BF16"} == set(DATATYPE_SIZES)


@pytest.mark.parametrize("datatype", list(NUMERIC))
def test_numeric_roundtrip_json_and_raw(datatype: str) -> None:
    values = NUMERIC[datatype]
    array = decode_json("t", datatype, [2, 3], values)
    assert array.shape == (2, 3)
    assert datatype_of(array) == datatype
    assert orjson.loads(orjson.dumps(encode_json(array, datatype), option=orjson.OPT_SERIALIZE_NUMPY)) == values
    raw = encode_raw(array, datatype)
    assert len(raw) == 6 * DATATYPE_SIZES[datatype]
    np.testing.assert_array_equal(decode_raw("t", datatype, [2, 3], raw), array)
    nested = decode_json("t", datatype, [2, 3], [values[:3], values[3:]])
    np.testing.assert_array_equal(nested, array)


def test_bytes_roundtrip() -> None:
    array = decode_json("s", "BYTES", [2, 2], ["a", "héllo", "", "x y"])
    assert array.dtype == object
    assert array[0, 1] == "héllo".encode()
    assert encode_json(array, "BYTES") == ["a", "héllo", "", "x y"]
    raw = encode_raw(array, "BYTES")
    assert raw[:5] == b"\x01\x00\x00\x00a"
    np.testing.assert_array_equal(decode_raw("s", "BYTES", [2, 2], raw), array)
    binary = np.array([b"\xff\x00", b"ok"], dtype=object)
    with pytest.raises(ServingError, match="not UTF-8"):
        encode_json(binary, "BYTES")
    assert datatype_of(np.array(["a", "b"])) == "BYTES"


def test_bf16_goes_through_float32() -> None:
    values = np.array([1.0, -2.5, 0.15625, 3.0e38], dtype=np.float32)
    raw = encode_raw(values, "BF16")
    assert len(raw) == 8
    back = decode_raw("b", "BF16", [4], raw)
    np.testing.assert_allclose(back, values, rtol=1 / 128)
    with pytest.raises(ServingError, match="BF16 tensors must be sent as binary"):
        decode_json("b", "BF16", [1], [1.0])


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "fragment"),
    [
        ("FP32", [2, 2], [1, 2, 3], "needs 4 elements, but the data has 3"),
        ("FP32", [3], [[1, 2], [3]], "does not fit"),
        ("INT8", [1], [300], "does not fit datatype INT8"),
        ("BOOL", [1], ["yes"], "not strings"),
        ("BYTES", [3], ["a", "b"], "needs 3 elements"),
        ("BYTES", [1], [5], "must be strings"),
    ],
)
def test_json_mismatches(datatype: str, shape: list[int], data: Any, fragment: str) -> None:
    with pytest.raises(ServingError, match=fragment) as caught:
        decode_json("t", datatype, shape, data)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "fragment"),
    [
        ("FP32", [2], b"\x00" * 7, "needs 8 bytes, but the data has 7"),
        ("BYTES", [2], b"\x01\x00\x00\x00a", "cannot hold 2 BYTES elements"),
        ("BYTES", [2], b"\x01\x00\x00\x00abcd", "ends after 1 of 2"),
        ("BYTES", [10**12], b"\x00" * 8, "cannot hold"),
        ("BYTES", [1], b"\x09\x00\x00\x00a", "runs past the end"),
        ("BYTES", [1], b"\x01\x00\x00\x00ab", "left over"),
        ("BF16", [2], b"\x00" * 3, "needs 4 bytes"),
    ],
)
def test_raw_mismatches(datatype: str, shape: list[int], raw: bytes, fragment: str) -> None:
    with pytest.raises(ServingError, match=fragment):
        decode_raw("t", datatype, shape, raw)


def test_empty_and_scalar_shapes() -> None:
    assert decode_json("t", "FP32", [0, 4], []).shape == (0, 4)
    assert decode_json("t", "INT32", [], 7).shape == ()
    assert decode_raw("t", "INT32", [], b"\x07\x00\x00\x00").item() == 7
