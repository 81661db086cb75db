"""V2 tensors <-> numpy arrays: JSON data, raw little-endian bytes (gRPC raw contents, Triton's binary
extension), BYTES as length-prefixed elements, FP16 natively and BF16 through float32.

Every decoder checks that the data holds exactly as many elements as the shape says; mismatches, values that
do not fit the datatype and ragged nesting are 400s that name the tensor.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from llmserve.protocol.errors import ServingError

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<f4"),  # held as float32 inside the runtime
    "BYTES": np.dtype(np.object_),
}
_DATATYPE_BY_KIND: dict[str, str] = {
    "b1": "BOOL",
    "u1": "UINT8",
    "u2": "UINT16",
    "u4": "UINT32",
    "u8": "UINT64",
    "i1": "INT8",
    "i2": "INT16",
    "i4": "INT32",
    "i8": "INT64",
    "f2": "FP16",
    "f4": "FP32",
    "f8": "FP64",
}
_LENGTH = struct.Struct("<I")


def element_count(shape: list[int] | tuple[int, ...]) -> int:
    return math.prod(shape)


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The V2 datatype for a numpy array (strings and objects are BYTES)."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    key = f"{kind}{array.dtype.itemsize}"
    datatype = _DATATYPE_BY_KIND.get(key)
    if datatype is None:
        raise ServingError(500, f"The model produced an array of dtype {array.dtype}, which V2 cannot carry.")
    return datatype


def _mismatch(name: str, shape: list[int], expected: int, got: int, unit: str = "elements") -> ServingError:
    return ServingError(400, f"Input '{name}': shape {shape} needs {expected} {unit}, but the data has {got}.")


def decode_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray[Any, Any]:
    """A tensor given as JSON data (flat or nested, row-major) as an array of `shape`."""
    expected = element_count(shape)
    if datatype == "BYTES":
        flat = _flatten(data) if isinstance(data, list) else [data]
        if len(flat) != expected:
            raise _mismatch(name, shape, expected, len(flat))
        array = np.empty(expected, dtype=np.object_)
        for i, item in enumerate(flat):
            if isinstance(item, str):
                array[i] = item.encode()
            elif isinstance(item, bytes):
                array[i] = item
            else:
                raise ServingError(400, f"Input '{name}': BYTES elements must be strings (got {type(item).__name__}).")
        return array.reshape(shape)
    if datatype == "BF16":
        raise ServingError(400, f"Input '{name}': BF16 tensors must be sent as binary data.")
    dtype = NUMPY_DTYPES[datatype]
    try:
        array = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ServingError(400, f"Input '{name}': data does not fit datatype {datatype} ({exc}).") from None
    if _first_leaf_is_str(data):
        raise ServingError(400, f"Input '{name}': datatype {datatype} needs numbers or booleans, not strings.")
    if array.size != expected:
        raise _mismatch(name, shape, expected, array.size)
    return array.reshape(shape)


def _first_leaf_is_str(data: Any) -> bool:
    """A cheap look at the first leaf: np.array would quietly turn '1' into 1.0 and 'no' into True."""
    first: Any = data
    while isinstance(first, list):
        if not first:
            return False
        first = first[0]
    return isinstance(first, str)


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(item, list) for item in data):
        return data
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def decode_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray[Any, Any]:
    """A tensor given as raw bytes: little-endian, row-major; BYTES elements each prefixed by a uint32 length."""
    expected = element_count(shape)
    if datatype == "BYTES":
        return _decode_bytes(name, shape, expected, bytes(raw))
    if datatype == "BF16":
        if len(raw) != expected * 2:
            raise _mismatch(name, shape, expected * 2, len(raw), "bytes")
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return halves.view(np.float32).reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if len(raw) != expected * dtype.itemsize:
        raise _mismatch(name, shape, expected * dtype.itemsize, len(raw), "bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _decode_bytes(name: str, shape: list[int], expected: int, raw: bytes) -> np.ndarray[Any, Any]:
    if expected * 4 > len(raw):  # every element has at least its 4-byte length: refuse before allocating
        raise ServingError(400, f"Input '{name}': {len(raw)} bytes cannot hold {expected} BYTES elements.")
    array = np.empty(expected, dtype=np.object_)
    offset = 0
    for i in range(expected):
        if offset + 4 > len(raw):
            raise ServingError(400, f"Input '{name}': BYTES data ends after {i} of {expected} elements.")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ServingError(400, f"Input '{name}': BYTES element {i} runs past the end of the data.")
        array[i] = raw[offset : offset + length]
        offset += length
    if offset != len(raw):
        raise ServingError(400, f"Input '{name}': {len(raw) - offset} bytes left over after {expected} BYTES elements.")
    return array.reshape(shape)


def as_datatype(array: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, Any]:
    """`array` converted for a tensor declared as `datatype` (BYTES: an object array of bytes)."""
    if datatype == "BYTES":
        if array.dtype.kind == "O" and all(isinstance(v, bytes) for v in array.flat):
            return array
        return np.array([v if isinstance(v, bytes) else str(v).encode() for v in array.flat], dtype=np.object_).reshape(
            array.shape
        )
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype])


def encode_json(array: np.ndarray[Any, Any], datatype: str) -> Any:
    """Flat JSON-ready data: a contiguous numeric array (orjson writes it natively) or a list of strings."""
    if datatype == "BYTES":
        try:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in array.flat]
        except UnicodeDecodeError:
            raise ServingError(
                400, "An output holds bytes that are not UTF-8; request it as binary data (binary_data: true)."
            ) from None
    if datatype == "BF16":
        return np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
    return np.ascontiguousarray(array).reshape(-1)


def encode_raw(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    """Raw little-endian bytes (BYTES: length-prefixed elements; BF16: rounded to nearest even)."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in array.flat:
            item = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(item)))
            parts.append(item)
        return b"".join(parts)
    if datatype == "BF16":
        bits = np.ascontiguousarray(array, dtype=np.float32).reshape(-1).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype("<u2").tobytes()
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()
