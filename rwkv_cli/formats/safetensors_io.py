"""Read `.safetensors` checkpoints by hand (no extra dependency).

Format facts: an unsigned 64-bit little-endian header length N, then N bytes of JSON mapping
each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to
the first byte after the header; an optional `"__metadata__"` entry holds strings), then the
raw little-endian, C-contiguous tensor data. Tensors are returned in the header's order as
lazy `StoredTensor` records that `pth.read_stored` reads through a short-lived memory map.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from .pth import ELEMENT_TYPES, ConversionError, PathLike, StoredTensor

# A header larger than this is not a model checkpoint (safetensors itself caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, step = [], 1
    for n in reversed(shape):
        stride.append(step)
        step *= max(n, 1)
    return tuple(reversed(stride))


def _is_int_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def read_safetensors(path: PathLike) -> list[StoredTensor]:
    """The tensors of a .safetensors file, in header order, without reading their data."""
    path = Path(path)
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise ConversionError(f"{path}: too short for a safetensors file ({file_size} bytes)")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
            raise ConversionError(
                f"{path}: header length {header_len} does not fit the file of {file_size} bytes "
                "(truncated, or not a safetensors file)"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConversionError(f"{path}: the safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: the safetensors header is not a JSON object")
    data_start = 8 + header_len
    tensors = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError) as exc:
            raise ConversionError(f"{path}: malformed header entry for {key!r}: {entry!r}") from exc
        # JSON gives any type anywhere (a dict as dtype was found by tests/fuzz)
        if (
            not isinstance(dtype, str)
            or not _is_int_list(shape)
            or not _is_int_list(offsets)
            or len(offsets) != 2
        ):
            raise ConversionError(f"{path}: malformed header entry for {key!r}: {entry!r}")
        shape = tuple(shape)
        begin, end = offsets
        if dtype not in ELEMENT_TYPES:
            raise ConversionError(
                f"{path}: tensor {key!r} has dtype {dtype}; only F32, F16 and BF16 are supported"
            )
        n_values = int(np.prod(shape, dtype=np.int64))
        if any(n < 0 for n in shape) or end - begin != n_values * ELEMENT_TYPES[dtype].itemsize:
            raise ConversionError(
                f"{path}: tensor {key!r}: data_offsets [{begin}, {end}] do not hold {shape} "
                f"values of {dtype}"
            )
        if begin < 0 or data_start + end > file_size:
            raise ConversionError(
                f"{path}: tensor {key!r} lies past the end of the file (truncated?)"
            )
        tensors.append(
            StoredTensor(key, dtype, shape, _contiguous_stride(shape), data_start + begin)
        )
    return tensors
