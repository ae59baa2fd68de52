"""MXFP4 (OCP Microscaling v1.0): 32-value blocks, E2M1 elements, one E8M0 scale per block.

Two byte layouts matter here:
- Hugging Face / openai/gpt-oss-20b: `*_blocks` uint8 [..., n_blocks, 16] with element 2i in
  the low nibble and 2i+1 in the high nibble, `*_scales` uint8 [..., n_blocks] (bias 127).
- ggml `block_mxfp4`: per block one scale byte then 16 bytes, byte j holding element j
  (low nibble) and element j+16 (high nibble).
The 4-bit codes are the same in both (ggml doubles its table and halves the scale), so
moving between them is lossless bit shuffling.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)
_MIDS = (E2M1[1:] + E2M1[:-1]) / 2  # rounding boundaries between neighbouring magnitudes


def shared_exponent_ocp(block_amax: np.ndarray) -> np.ndarray:
    """OCP spec rule: floor(log2(amax)) - 2 (the largest E2M1 magnitude is 6 = 1.5 * 2**2)."""
    with np.errstate(divide="ignore"):
        e = np.where(block_amax > 0, np.floor(np.log2(block_amax)) - 2, -127)
    return np.clip(e, -127, 127).astype(np.int32)


def encode_e2m1(x: np.ndarray) -> np.ndarray:
    """Round to the nearest E2M1 value, ties to even, saturating at +-6; returns 4-bit codes."""
    a = np.minimum(np.abs(x), 6.0)
    code = np.searchsorted(_MIDS, a, side="left")
    tie = (code < len(_MIDS)) & (a == _MIDS[np.minimum(code, len(_MIDS) - 1)])
    code = np.where(tie & (code % 2 == 1), code + 1, code)
    sign = (np.signbit(x) & (code > 0)).astype(np.uint8)  # zero is always +0
    return (code.astype(np.uint8) | (sign << 3)).astype(np.uint8)


def _codes(blocks: np.ndarray, e: np.ndarray) -> np.ndarray:
    return encode_e2m1(blocks / np.ldexp(np.float32(1), e)[..., None])


def _block_sse(blocks: np.ndarray, e: np.ndarray) -> np.ndarray:
    lut = np.concatenate([E2M1, -E2M1])
    deq = lut[_codes(blocks, e)] * np.ldexp(np.float32(1), e)[..., None]
    return ((deq - blocks) ** 2).sum(axis=-1)


def shared_exponent_search(blocks: np.ndarray) -> np.ndarray:
    """Per block, the exponent among OCP's e-1, e, e+1 with the least squared error: e+1
    avoids clipping outliers past 6, e-1 trades clipping for finer steps."""
    e0 = shared_exponent_ocp(np.abs(blocks).max(axis=-1))
    best, best_err = e0, _block_sse(blocks, e0)
    for d in (-1, 1):
        e = np.clip(e0 + d, -127, 127)
        err = _block_sse(blocks, e)
        better = err < best_err
        best, best_err = np.where(better, e, best), np.where(better, err, best_err)
    return best


EXPONENT_RULES = {"ocp": lambda b: shared_exponent_ocp(np.abs(b).max(axis=-1)), "search": shared_exponent_search}


def quantize(w: np.ndarray, rule: str = "ocp") -> tuple[np.ndarray, np.ndarray]:
    """Quantize along the last axis to HF layout (blocks [..., n, 16], scales [..., n]).

    rule "ocp" (default) is the spec's floor(log2(amax)) - 2, which is what gguf-py,
    llama.cpp and the published gpt-oss checkpoints use; "search" picks per block the
    neighbouring exponent with the least error (see bench/mxfp4_exponent_rules.py)."""
    if w.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs rows that are a multiple of {BLOCK}, got {w.shape[-1]}")
    blocks = w.astype(np.float32, copy=False).reshape(*w.shape[:-1], -1, BLOCK)
    e = EXPONENT_RULES[rule](blocks)
    codes = _codes(blocks, e)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed.astype(np.uint8), (e + 127).astype(np.uint8)


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """HF layout back to float32 [..., n_blocks * 32]."""
    lut = np.concatenate([E2M1, -E2M1])
    lo, hi = lut[blocks & 0x0F], lut[blocks >> 4]
    vals = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], BLOCK)
    vals = vals * np.ldexp(np.float32(1), scales.astype(np.int32) - 127)[..., None]
    return vals.reshape(*blocks.shape[:-2], -1).astype(np.float32)


def hf_to_ggml(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """HF blocks/scales -> ggml block_mxfp4 bytes [..., n_blocks * 17]; lossless."""
    lo, hi = blocks & 0x0F, blocks >> 4
    vals = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], BLOCK)
    qs = vals[..., :16] | (vals[..., 16:] << 4)
    out = np.concatenate([scales[..., None], qs.astype(np.uint8)], axis=-1)
    return out.reshape(*blocks.shape[:-2], -1)


def ggml_to_hf(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of hf_to_ggml, used by tests to compare bytes after unpacking."""
    b = raw.reshape(*raw.shape[:-1], -1, 17)
    scales, qs = b[..., 0], b[..., 1:]
    vals = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    return (vals[..., 0::2] | (vals[..., 1::2] << 4)).astype(np.uint8), scales.copy()
