"""GGUF writer: names, types, shapes, metadata, bit-exact MXFP4 experts."""

import gguf
import numpy as np

from edgeport.core import mxfp4
from edgeport.core.source import Source
from tests.conftest import gguf_of


def _reader(path):
    r = gguf.GGUFReader(path)
    return r, {t.name: t for t in r.tensors}


def _field(r, key):
    f = r.fields[key]
    return f.contents()


def test_gpt_oss_tensors_and_hparams(gpt_oss_dir, gguf_dir):
    r, t = _reader(gguf_of(gpt_oss_dir, gguf_dir))
    assert _field(r, "general.architecture") == "gpt-oss"
    assert t["blk.0.ffn_gate_exps.weight"].tensor_type.name == "F16"
    assert tuple(t["blk.0.ffn_gate_exps.weight"].shape) == (288, 256, 4)  # ggml order
    assert tuple(t["blk.0.ffn_down_exps.weight"].shape) == (256, 288, 4)
    assert t["blk.0.ffn_gate_inp.weight"].tensor_type.name == "F32"  # router stays F32
    assert t["blk.0.attn_sinks.weight"].tensor_type.name == "F32"
    assert _field(r, "gpt-oss.attention.sliding_window") == 64
    assert _field(r, "gpt-oss.expert_count") == 4 and _field(r, "gpt-oss.expert_used_count") == 2
    assert _field(r, "gpt-oss.rope.scaling.factor") == 32.0
    assert _field(r, "gpt-oss.rope.scaling.original_context_length") == 4096
    assert _field(r, "tokenizer.ggml.pre") == "gpt-4o"
    assert "<|start|>" in _field(r, "tokenizer.chat_template")


def test_gate_up_split_is_the_interleave(gpt_oss_dir, gguf_dir):
    _, t = _reader(gguf_of(gpt_oss_dir, gguf_dir))
    w = Source.open(gpt_oss_dir).read_f32("model.layers.2.mlp.experts.gate_up_proj")  # [E, H, 2I]
    gate = np.asarray(t["blk.2.ffn_gate_exps.weight"].data).astype(np.float32)  # [E, I, H]
    up = np.asarray(t["blk.2.ffn_up_exps.weight"].data).astype(np.float32)
    assert np.array_equal(gate, w[:, :, 0::2].transpose(0, 2, 1).astype(np.float16).astype(np.float32))
    assert np.array_equal(up, w[:, :, 1::2].transpose(0, 2, 1).astype(np.float16).astype(np.float32))


def test_mxfp4_experts_are_bit_exact_in_f16_gguf(mxfp4_dir, gguf_dir):
    src = Source.open(mxfp4_dir)
    _, t = _reader(gguf_of(mxfp4_dir, gguf_dir))
    for layer in range(4):
        blocks = src.read_raw(f"model.layers.{layer}.mlp.experts.gate_up_proj_blocks")
        scales = src.read_raw(f"model.layers.{layer}.mlp.experts.gate_up_proj_scales")
        for name, rows in (("gate", slice(0, None, 2)), ("up", slice(1, None, 2))):
            g = t[f"blk.{layer}.ffn_{name}_exps.weight"]
            assert g.tensor_type.name == "MXFP4"
            b, s = mxfp4.ggml_to_hf(np.asarray(g.data))
            assert np.array_equal(b.reshape(blocks[:, rows].shape), blocks[:, rows])
            assert np.array_equal(s.reshape(scales[:, rows].shape), scales[:, rows])
        d = t[f"blk.{layer}.ffn_down_exps.weight"]
        b, s = mxfp4.ggml_to_hf(np.asarray(d.data))
        src_b = src.read_raw(f"model.layers.{layer}.mlp.experts.down_proj_blocks")
        assert np.array_equal(b.reshape(src_b.shape), src_b)


def test_llama_qk_permutation_and_metadata(llama_dir, gguf_dir):
    r, t = _reader(gguf_of(llama_dir, gguf_dir))
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "tokenizer.ggml.pre") == "llama-bpe"
    assert _field(r, "llama.rope.dimension_count") == 64
    q = Source.open(llama_dir).read_f32("model.layers.0.self_attn.q_proj.weight")
    got = np.asarray(t["blk.0.attn_q.weight"].data).astype(np.float32)
    # head 0's rows: HF [x0..x31 | x32..x63] pairs -> llama.cpp interleaved pairs
    assert np.array_equal(got[0], q[0].astype(np.float16).astype(np.float32))
    assert np.array_equal(got[1], q[32].astype(np.float16).astype(np.float32))
    assert not np.array_equal(got[1], q[1].astype(np.float16).astype(np.float32))
