"""vllm target: HF MXFP4 checkpoint (pass-through and BF16 -> MXFP4), transformers' MXFP4
loader as the CPU parity runtime, dense refusal, and the vLLM runtime's clear errors."""

import json
import sys
import types

import numpy as np
import pytest
from safetensors import safe_open

from edgeport import runtimes
from edgeport.core.errors import RuntimeUnavailable, TargetError
from edgeport.core.source import Source
from edgeport.export.pipeline import export


def _tensor(d, name):
    idx = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(d / idx[name], "pt") as f:
        return f.get_tensor(name)


@pytest.fixture(scope="module")
def passthrough(exported):
    return exported("vllm-gpt-oss-mxfp4")


def test_mxfp4_source_passes_through_bit_exact(passthrough, mxfp4_dir):
    path, m = passthrough
    src = Source.open(mxfp4_dir)
    names = [n for n in src.tensors if n.endswith(("_blocks", "_scales"))]
    assert len(names) == 16
    for n in names:
        assert np.array_equal(_tensor(path, n).numpy(), src.read_raw(n)), n
    assert m["quantization"]["variant"] == "mxfp4-passthrough"
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    assert len(list(path.glob("model-*-of-*.safetensors"))) == 5  # one shard per layer + embeddings
    st = m["parity"]["stages"]["end_to_end"]
    # the weights are bit-exact (above); the streamed reference runs experts on a one-expert copy of
    # transformers' module, which moves logits by up to 5.7e-6 on this model (measured once), so
    # the KL is float noise (2e-15 measured), not 0.0 as with the whole-model reference
    assert st["summary"]["mean_kl"] < 1e-12 and st["summary"]["top1"] == 1.0 and st["passed"]
    assert m["runtime"]["serve"].startswith("vllm serve ") and "--quantization mxfp4" in m["runtime"]["serve"]


def test_bf16_source_is_quantized_and_read_by_transformers(gpt_oss_dir, tmp_path):
    path, m = export(str(gpt_oss_dir), "vllm", tmp_path / "vllm")
    assert m["quantization"]["variant"] == "bf16-to-mxfp4"
    blocks = _tensor(path, "model.layers.0.mlp.experts.gate_up_proj_blocks")
    assert tuple(blocks.shape) == (4, 512, 9, 16) and str(blocks.dtype) == "torch.uint8"
    s = m["parity"]["stages"]["end_to_end"]["summary"]
    assert 0 < s["mean_kl"] < 0.1 and s["top1"] > 0.85  # a real, bounded 4-bit cost
    # non-expert tensors are the source's bytes
    src = Source.open(gpt_oss_dir)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert np.array_equal(_tensor(path, q).view(dtype=__import__("torch").int16).numpy(),
                          src.read_raw(q).view(np.int16))


def test_dense_llama_is_refused_with_targets_that_fit(llama_dir, tmp_path):
    with pytest.raises(TargetError, match=r"MoE experts only.*--target cpu"):
        export(str(llama_dir), "vllm", tmp_path / "vllm")
    assert not (tmp_path / "vllm").exists()


def test_vllm_runtime_without_vllm_is_a_clear_error(passthrough, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(RuntimeUnavailable, match="vLLM is not installed"):
        runtimes.load(passthrough[0])


def test_vllm_runtime_without_gpu_is_a_clear_error(passthrough, monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeUnavailable, match="needs a CUDA GPU"):
        runtimes.load(passthrough[0])
