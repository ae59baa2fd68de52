"""TensorRT-LLM v0.12 checkpoint (the layout `trtllm-build --checkpoint_dir` reads) for Llama.

Facts from TensorRT-LLM v0.12.0 (`tensorrt_llm/models/modeling_utils.py`, `llama/config.py`,
`layers/linear.py`, `models/convert_utils.py`, `quantization/layers.py`):
- linear weights are [out, in] like Hugging Face's; `mlp.fc` is HF `gate_proj` (the one under
  the activation), `mlp.gate` is HF `up_proj`, `mlp.proj` is `down_proj`; q, k, v are
  concatenated into `attention.qkv`;
- W8A16 int8 weights must be in the GPU-specific interleaved layout that
  `symmetric_quantize_last_axis_of_batched_matrix` produces (it asks the GPU for its SM), so a
  CPU cannot write them. With `quant_algo = "W8A16"` and FP16 weights, `preprocess_weights`
  quantizes them while `trtllm-build` loads the checkpoint on the Orin: TensorRT-LLM's own
  W8A16 conversion, on the device it is for. So the kit ships FP16 weights and that config;
  the simulated parity (runtimes/simulated.py) applies the same quantization formula;
- `quantization` takes only quant_algo, kv_cache_quant_algo, group_size, smoothquant_val,
  clamp_val, has_zero_point, pre_quant_scale, exclude_modules (others raise TypeError);
  `mapping` only world_size/rank/gpus_per_node/cp_size/tp_size/pp_size/moe_* keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeport.core.errors import ArchitectureError
from edgeport.core.source import Source

from . import safetensors_stream
from .safetensors_stream import StreamTensor

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


def config(hf: dict, quant_algo: str | None) -> dict:
    heads = hf["num_attention_heads"]
    rp = hf.get("rope_parameters") or {}
    rope_type = rp.get("rope_type", "default")
    scaling = None
    if rope_type != "default":
        scaling = {"type": rope_type, **{k: v for k, v in rp.items() if k not in ("rope_type", "rope_theta")}}
    return {
        "architecture": "LlamaForCausalLM",
        "dtype": "float16",
        "logits_dtype": "float32",
        "vocab_size": hf["vocab_size"],
        "max_position_embeddings": hf["max_position_embeddings"],
        "hidden_size": hf["hidden_size"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": hf.get("num_key_value_heads", heads),
        "head_size": hf.get("head_dim") or hf["hidden_size"] // heads,
        "intermediate_size": hf["intermediate_size"],
        "hidden_act": hf.get("hidden_act", "silu"),
        "norm_epsilon": hf.get("rms_norm_eps", 1e-5),
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": rp.get("rope_theta", hf.get("rope_theta", 10000.0)),
        "rotary_scaling": scaling,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "share_embedding_table": False,
        "attn_bias": False,
        "mlp_bias": False,
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": {"quant_algo": quant_algo, "kv_cache_quant_algo": None},
    }


def plan(src: Source) -> dict[str, tuple[str, ...]]:
    """TensorRT-LLM name -> the HF tensors it is made of, in file order."""
    if any(n.endswith(".bias") for n in src.tensors):
        raise ArchitectureError("this Llama checkpoint has bias tensors; the TensorRT-LLM kit writes "
                                "bias-free Llama (attn_bias / mlp_bias false)")
    out: dict[str, tuple[str, ...]] = {"transformer.vocab_embedding.weight": ("model.embed_tokens.weight",)}
    for i in range(src.config["num_hidden_layers"]):
        for t, hf in LAYER_TENSORS.items():
            out[f"transformer.layers.{i}.{t}"] = tuple(f"model.layers.{i}.{h}" for h in hf)
    out["transformer.ln_f.weight"] = ("model.norm.weight",)
    lm = "lm_head.weight" if "lm_head.weight" in src.tensors else "model.embed_tokens.weight"  # tied
    out["lm_head.weight"] = (lm,)
    return out


def write(src: Source, out: Path, quant_algo: str | None = "W8A16") -> dict[str, dict]:
    """config.json + rank0.safetensors (FP16, streamed one tensor at a time). Returns
    {name: {shape, dtype, from, quantized_on_device}} for the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    records, tensors = {}, []
    for name, parts in plan(src).items():
        shape = list(src.entry(parts[0]).shape)
        shape[0] = sum(src.entry(p).shape[0] for p in parts)

        def chunks(parts=parts):
            for p in parts:
                yield src.read_f32(p).astype(np.float16)

        tensors.append(StreamTensor(name, "F16", tuple(shape), chunks))
        records[name] = {"shape": shape, "dtype": "float16", "from": list(parts),
                         "quantized_on_device": quant_algo == "W8A16" and name.endswith(WEIGHT_ONLY)}
    safetensors_stream.write(out / "rank0.safetensors", tensors, metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config(src.config, quant_algo), indent=2) + "\n")
    return records


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
