"""The streaming safetensors writer, read back by the safetensors library."""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from edgeport.export.safetensors_stream import StreamTensor, write


def test_roundtrip_through_the_safetensors_library(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((5, 7)).astype(np.float32)
    bf16 = torch.randn(3, 4, dtype=torch.bfloat16)
    u8 = rng.integers(0, 256, (2, 3, 16), dtype=np.uint8)
    tensors = [
        StreamTensor("a", "F32", f32.shape, lambda: iter([f32[:2], f32[2:]])),  # two chunks
        StreamTensor("b", "BF16", tuple(bf16.shape), lambda: iter([bf16.view(torch.int16).numpy()])),
        StreamTensor("c", "U8", u8.shape, lambda: iter([u8])),
    ]
    n = write(tmp_path / "x.safetensors", tensors, metadata={"format": "pt"})
    assert n == f32.nbytes + 24 + u8.nbytes
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert np.array_equal(f.get_tensor("a").numpy(), f32)
        assert torch.equal(f.get_tensor("b"), bf16)
        assert np.array_equal(f.get_tensor("c").numpy(), u8)


def test_short_producer_is_an_error(tmp_path):
    t = StreamTensor("a", "F32", (4,), lambda: iter([np.zeros(3, np.float32)]))
    with pytest.raises(ValueError, match="wrote 12 bytes, expected 16"):
        write(tmp_path / "x.safetensors", [t])
