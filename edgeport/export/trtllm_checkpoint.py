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
  the name tables and the reader are edgeport.core.kit_weights (the writer and that reader share them);
- `quantization` takes only quant_algo, kv_cache_quant_algo, group_size, smoothquant_val,
  clamp_val, has_zero_point, pre_quant_scale, exclude_modules (others raise TypeError);
  `mapping` only world_size/rank/gpus_per_node/cp_size/tp_size/pp_size/moe_* keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeport.core.errors import ArchitectureError
from edgeport.core.kit_weights import LAYER_TENSORS, WEIGHT_ONLY
from edgeport.core.source import Source

from . import safetensors_stream
from .safetensors_stream import StreamTensor


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
