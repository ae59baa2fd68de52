"""Jetson kits' weight layouts: written by the exporter (export/trtllm_checkpoint.py, export/edgellm.py)
and read back by the simulated runtime (runtimes/simulated.py), which computes what the kit holds.
One place, below both, so the writer and the reader cannot drift apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# TensorRT-LLM name <- Hugging Face name(s), per layer ({i}); concatenated along dim 0.
LAYER_TENSORS: dict[str, tuple[str, ...]] = {
    "input_layernorm.weight": ("input_layernorm.weight",),
    "attention.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attention.dense.weight": ("self_attn.o_proj.weight",),
    "post_layernorm.weight": ("post_attention_layernorm.weight",),
    "mlp.fc.weight": ("mlp.gate_proj.weight",),
    "mlp.gate.weight": ("mlp.up_proj.weight",),
    "mlp.proj.weight": ("mlp.down_proj.weight",),
}
GLOBAL_TENSORS: dict[str, str] = {
    "transformer.vocab_embedding.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# what W8A16 quantizes (TensorRT-LLM's default: not lm_head, embeddings or norms)
WEIGHT_ONLY = ("attention.qkv.weight", "attention.dense.weight", "mlp.fc.weight", "mlp.gate.weight",
               "mlp.proj.weight")


def to_hf_state_dict(ckpt: Path):
    """Read a checkpoint written by `write` back into HF names (torch fp32 tensors), and the
    HF weight names W8A16 quantizes: the simulated runtime runs what the kit holds."""
    import torch
    from safetensors.torch import load_file

    cfg = json.loads((ckpt / "config.json").read_text())
    t = load_file(str(ckpt / "rank0.safetensors"))
    hd, nh, nkv = cfg["head_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    state = {hf: t[trt] for trt, hf in GLOBAL_TENSORS.items()}
    quant = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.layers.{i}."
        for trt, hfs in LAYER_TENSORS.items():
            w = t[p + trt]
            if trt == "attention.qkv.weight":
                parts = torch.split(w, [nh * hd, nkv * hd, nkv * hd], dim=0)
            else:
                parts = (w,)
            for h, part in zip(hfs, parts, strict=True):
                state[f"model.layers.{i}.{h}"] = part
                if (cfg["quantization"] or {}).get("quant_algo") == "W8A16" and trt in WEIGHT_ONLY:
                    quant.append(f"model.layers.{i}.{h}")
    return state, quant


def unpack_int4_rows(packed: np.ndarray) -> np.ndarray:
    """ModelOpt's packed int4 weight [out/2, in] uint8 -> int8 [out, in]: row 2i in the low
    nibble, row 2i+1 in the high nibble, two's complement (tests/test_jetson_target.py checks
    this reconstructs the source weights; runtimes/simulated.py computes with it)."""
    out = np.empty((packed.shape[0] * 2, packed.shape[1]), np.int8)
    out[0::2], out[1::2] = packed & 0x0F, packed >> 4
    return np.where(out > 7, out - 16, out).astype(np.int8)
