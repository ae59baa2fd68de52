"""Write a safetensors file tensor by tensor, chunk by chunk.

The safetensors library serializes a whole file from tensors held in memory (and copies
them once more on the way); a checkpoint writer that must stay within one chunk of memory
writes the (simple, documented) format itself: 8-byte little-endian header length, the JSON
header with each tensor's dtype, shape and byte offsets, then the raw bytes in that order.
Files are read back with the safetensors library in the tests.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "I32": 4, "I64": 8}


@dataclass
class StreamTensor:
    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[np.ndarray]]  # raw little-endian values, in order

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * ITEMSIZE[self.dtype]


def write(path: Path, tensors: list[StreamTensor], metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` in list order; returns the data size in bytes."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data buffer starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            written = 0
            for chunk in t.chunks():
                b = np.ascontiguousarray(chunk)
                f.write(b.data)
                written += b.nbytes
            if written != t.nbytes:
                raise ValueError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
    return offset
