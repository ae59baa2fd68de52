"""Synthetic checkpoints with openai/gpt-oss-20b's exact dimensions (random values), for
the benchmarks: experts either in MXFP4 (as the model ships) or BF16 (as a fine-tune).
Written one shard per layer, tensor by tensor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgeport.models import MODELS

# openai/gpt-oss-20b config.json, less what a synthetic copy cannot have
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 2880,
    "intermediate_size": 2880, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
    "num_local_experts": 32, "num_experts_per_tok": 4, "vocab_size": 201088, "sliding_window": 128,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "attention_bias": True,
    "rope_parameters": {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                        "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
                        "truncate": False},
    "swiglu_limit": 7.0, "tie_word_embeddings": False, "eos_token_id": 200002, "pad_token_id": 199999,
    "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
}


def make_checkpoint(out: Path, n_layers: int, experts: str = "mxfp4") -> Path:
    """experts: "mxfp4" (random blocks/scales, quantization_config set) or "bf16"."""
    import torch
    from safetensors.torch import save_file

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    c = GPT_OSS_20B
    h, i, e, nh, nkv, hd, v = (c["hidden_size"], c["intermediate_size"], c["num_local_experts"],
                              c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["vocab_size"])

    def bf16(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    def u8(lo, hi, *shape):
        return torch.randint(lo, hi, shape, generator=g, dtype=torch.uint8)

    weight_map = {}

    def save(tensors: dict, name: str):
        save_file(tensors, tmp / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))

    save({"model.embed_tokens.weight": bf16(v, h)}, "embed.safetensors")
    save({"lm_head.weight": bf16(v, h), "model.norm.weight": bf16(h)}, "head.safetensors")
    for layer in range(n_layers):
        p = f"model.layers.{layer}"
        t = {f"{p}.input_layernorm.weight": bf16(h), f"{p}.post_attention_layernorm.weight": bf16(h),
             f"{p}.self_attn.q_proj.weight": bf16(nh * hd, h), f"{p}.self_attn.q_proj.bias": bf16(nh * hd),
             f"{p}.self_attn.k_proj.weight": bf16(nkv * hd, h), f"{p}.self_attn.k_proj.bias": bf16(nkv * hd),
             f"{p}.self_attn.v_proj.weight": bf16(nkv * hd, h), f"{p}.self_attn.v_proj.bias": bf16(nkv * hd),
             f"{p}.self_attn.o_proj.weight": bf16(h, nh * hd), f"{p}.self_attn.o_proj.bias": bf16(h),
             f"{p}.self_attn.sinks": bf16(nh), f"{p}.mlp.router.weight": bf16(e, h), f"{p}.mlp.router.bias": bf16(e),
             f"{p}.mlp.experts.gate_up_proj_bias": bf16(e, 2 * i), f"{p}.mlp.experts.down_proj_bias": bf16(e, h)}
        if experts == "mxfp4":
            t |= {f"{p}.mlp.experts.gate_up_proj_blocks": u8(0, 256, e, 2 * i, h // 32, 16),
                  f"{p}.mlp.experts.gate_up_proj_scales": u8(115, 125, e, 2 * i, h // 32),
                  f"{p}.mlp.experts.down_proj_blocks": u8(0, 256, e, h, i // 32, 16),
                  f"{p}.mlp.experts.down_proj_scales": u8(115, 125, e, h, i // 32)}
        else:
            t |= {f"{p}.mlp.experts.gate_up_proj": bf16(e, h, 2 * i), f"{p}.mlp.experts.down_proj": bf16(e, i, h)}
        save(t, f"layer-{layer:02d}.safetensors")
        del t
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cfg = {k: val for k, val in GPT_OSS_20B.items() if experts == "mxfp4" or k != "quantization_config"}
    (tmp / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": n_layers}, indent=1))
    # the tiny gpt-oss's tokenizer stands in (padded to the vocab size by the converters)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy2(MODELS / "tiny-gpt-oss" / f, tmp / f)
    tmp.rename(out)
    return out


def build_in_subprocess(out: Path, n_layers: int, experts: str) -> Path:
    """Build in a fresh process: a measured child forked from a parent that held the tensors
    would inherit the parent's RSS high-water mark in ru_maxrss."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", f"import sys; "
                    "from edgeport.benchmarking.synthetic import make_checkpoint; from pathlib import Path; "
                    f"make_checkpoint(Path({str(out)!r}), {n_layers}, {experts!r})"], check=True)
    return out
