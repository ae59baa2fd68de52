"""MXFP4 codec: the OCP rule, round-to-nearest-even, and agreement with gguf-py's quantizer."""

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from edgeport.core import mxfp4
from edgeport.core.source import Source
from tests.conftest import LLAMA


def test_e2m1_rounds_to_nearest_even_and_saturates():
    x = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.26, 5.01, 7.0, 100.0, -0.75, -0.1])
    want = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 0.5, 6.0, 6.0, 6.0, -1.0, -0.0]
    codes = mxfp4.encode_e2m1(x)
    lut = np.concatenate([mxfp4.E2M1, -mxfp4.E2M1])
    assert lut[codes].tolist() == want
    assert codes[-1] == 0  # a negative value that rounds to zero is stored as +0


def test_shared_exponent_is_floor_log2_amax_minus_2():
    w = np.zeros((1, 32), np.float32)
    w[0, 0] = 6.0  # 6 = 1.5 * 2**2 -> exponent 0, scale byte 127
    _, s = mxfp4.quantize(w)
    assert s.tolist() == [[127]]
    w[0, 0] = 7.9  # floor(log2 7.9) - 2 = 0 as well: 7.9 saturates to 6
    b, s = mxfp4.quantize(w)
    assert s.tolist() == [[127]] and mxfp4.dequantize(b, s)[0, 0] == 6.0
    w[0, 0] = 8.0
    _, s = mxfp4.quantize(w)
    assert s.tolist() == [[128]]


def test_rejects_rows_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.quantize(np.ones((2, 40), np.float32))


def test_layout_roundtrip_is_lossless():
    rng = np.random.default_rng(1)
    b = rng.integers(0, 256, (3, 5, 9, 16), dtype=np.uint8)
    s = rng.integers(100, 140, (3, 5, 9), dtype=np.uint8)
    raw = mxfp4.hf_to_ggml(b, s)
    assert raw.shape == (3, 5, 9 * 17)
    b2, s2 = mxfp4.ggml_to_hf(raw)
    assert np.array_equal(b, b2) and np.array_equal(s, s2)
    # both layouts decode to the same values
    ours = mxfp4.dequantize(b, s)
    theirs = gguf_dequantize(raw.reshape(15, -1), gguf.GGMLQuantizationType.MXFP4).reshape(ours.shape)
    assert np.array_equal(ours, theirs)


# Trained BF16 weights that are not MXFP4 values already: the tiny Llama's MLP. (The tiny gpt-oss's experts
# were trained at their MXFP4 values, edgeport/models/build_tools.py --qat, so every codec returns them as
# they are.)
def _trained_rows(name: str) -> np.ndarray:
    """[rows, n] of a tiny Llama weight, n a multiple of 32."""
    return np.ascontiguousarray(Source.open(LLAMA).read_f32(name))


def test_agrees_with_gguf_quantizer_except_at_exact_ties():
    """Same shared exponent rule; elements differ only where a value sits exactly between two
    E2M1 neighbours: we round to even (OCP), gguf-py takes the first table entry (toward
    zero). On BF16 weights such ties are common (~0.5 % of elements on a trained tiny model);
    both choices have the same absolute error, ours is unbiased."""
    rows = _trained_rows("model.layers.1.mlp.down_proj.weight")  # [H, I]: rows of I
    b, s = mxfp4.quantize(rows)
    ours_raw = mxfp4.hf_to_ggml(b, s)
    theirs_raw = gguf_quantize(rows, gguf.GGMLQuantizationType.MXFP4)
    assert np.array_equal(ours_raw[:, ::17], theirs_raw[:, ::17])  # identical scale bytes
    ours = mxfp4.dequantize(b, s)
    theirs = gguf_dequantize(theirs_raw, gguf.GGMLQuantizationType.MXFP4).reshape(rows.shape)
    scale = np.repeat(np.ldexp(np.float32(1), s.astype(np.int32) - 127), 32, axis=-1)
    tie = np.isin(np.abs(rows / scale), (mxfp4.E2M1[1:] + mxfp4.E2M1[:-1]) / 2)
    differ = ours != theirs
    assert differ.any() and not (differ & ~tie).any()
    assert 0.001 < differ.mean() < 0.02
    assert np.array_equal(np.abs(ours - rows)[differ], np.abs(theirs - rows)[differ])
    assert np.all(np.abs(ours[differ]) >= np.abs(theirs[differ]))  # gguf-py rounds ties toward zero
    rel = np.abs(ours - rows).mean() / np.abs(rows).mean()
    assert 0.01 < rel < 0.2  # 4-bit: a real, bounded error


def test_exponent_search_never_worse_per_block_and_better_overall():
    rows = _trained_rows("model.layers.0.mlp.gate_proj.weight")  # [I, H]: rows of H

    def block_err(rule):
        d = mxfp4.dequantize(*mxfp4.quantize(rows, rule)) - rows
        return (d.reshape(rows.shape[0], -1, 32) ** 2).sum(-1)

    ocp, search = block_err("ocp"), block_err("search")
    assert np.all(search <= ocp + 1e-12)
    assert search.sum() < ocp.sum()
