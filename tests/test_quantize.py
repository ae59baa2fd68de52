"""llama.cpp quantization: experts kept bit-exact, honest per-tensor types, clean failures."""

import re

import gguf
import numpy as np
import pytest

from edgeport.core.architectures import GPT_OSS
from edgeport.core.errors import QuantizationError
from edgeport.export.gguf_export import GGUFExporter
from edgeport.export.gguf_quantize import quantize, summarize, tensor_types
from tests.conftest import gguf_of

MXFP4 = gguf.GGMLQuantizationType.MXFP4


def test_q4_k_m_of_mxfp4_source_keeps_experts_bit_exact(mxfp4_dir, gguf_dir, tmp_path):
    f16 = gguf_of(mxfp4_dir, gguf_dir)
    pattern = GGUFExporter().expert_pattern(GPT_OSS)
    out = tmp_path / "q.gguf"
    quantize(f16, out, "Q4_K_M", keep={pattern: MXFP4})
    before = {t.name: t for t in gguf.GGUFReader(f16).tensors}
    after = {t.name: t for t in gguf.GGUFReader(out).tensors}
    experts = [n for n in after if re.match(pattern, n)]
    assert len(experts) == 12
    for n in experts:
        assert after[n].tensor_type == MXFP4
        assert np.array_equal(np.asarray(after[n].data), np.asarray(before[n].data))
    # everything else followed llama.cpp's Q4_K_M rules
    assert after["blk.0.attn_output.weight"].tensor_type.name == "Q4_K"  # rows of 256
    assert after["blk.0.attn_q.weight"].tensor_type.name == "Q5_0"  # rows of 288: fallback


def test_requantizing_mxfp4_without_keep_fails_cleanly(mxfp4_dir, gguf_dir, tmp_path):
    out = tmp_path / "q.gguf"
    with pytest.raises(QuantizationError, match="requantizing from type mxfp4 is disabled"):
        quantize(gguf_of(mxfp4_dir, gguf_dir), out, "Q4_K_M")
    assert not out.exists()  # llama.cpp's partial file is removed


def test_fallbacks_are_reported_per_tensor(gpt_oss_dir, gguf_dir, tmp_path):
    out = tmp_path / "q.gguf"
    quantize(gguf_of(gpt_oss_dir, gguf_dir), out, "Q4_K_M")
    types = tensor_types(out)
    s = summarize(types, "Q4_K_M")
    by_name = {f["tensor"]: f for f in s["fallbacks"]}
    assert by_name["blk.0.attn_q.weight"]["type"] == "Q5_0"
    assert "288 is not a multiple of 256: Q4_K fell back to Q5_0" in by_name["blk.0.attn_q.weight"]["reason"]
    assert "blk.0.attn_output.weight" not in by_name  # 256-wide rows take Q4_K
    assert sum(s["counts"].values()) == len(types)
    assert s["counts"]["Q4_K"] >= 4


def test_unknown_scheme(gpt_oss_dir, gguf_dir, tmp_path):
    with pytest.raises(QuantizationError, match="unknown GGUF quantization"):
        quantize(gguf_of(gpt_oss_dir, gguf_dir), tmp_path / "x.gguf", "Q3_XYZ")
