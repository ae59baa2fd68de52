"""What each supported architecture is, as data: the one place a new family is added.

Tensor *names* come from gguf-py's TensorNameMap; this table holds only what differs per
family: hyper-parameter keys, how HF tensors are reshaped on the way to GGUF, the
tokenizer's pre-tokenizer name llama.cpp knows, and the chat format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf

from .errors import ArchitectureError

# (GGUFWriter method, HF config key or dotted path, required)
HParam = tuple[str, str, bool]

COMMON_HPARAMS: tuple[HParam, ...] = (
    ("add_context_length", "max_position_embeddings", True),
    ("add_embedding_length", "hidden_size", True),
    ("add_feed_forward_length", "intermediate_size", True),
    ("add_head_count", "num_attention_heads", True),
    ("add_head_count_kv", "num_key_value_heads", True),
    ("add_layer_norm_rms_eps", "rms_norm_eps", True),
    ("add_rope_freq_base", "rope_parameters.rope_theta", True),
    ("add_key_length", "head_dim", False),
    ("add_value_length", "head_dim", False),
)


@dataclass(frozen=True)
class TensorRule:
    """How an HF tensor (matched by name suffix) becomes GGUF tensors.

    op names a transform in export.gguf_convert.TRANSFORMS; `outputs` are HF-style names
    (with {p} = the matched prefix) that TensorNameMap turns into GGUF names.
    """

    suffix: str
    op: str
    outputs: tuple[str, ...] = ("{p}{s}",)


@dataclass(frozen=True)
class Architecture:
    name: str  # our short name, used in target profiles and thresholds
    hf_architectures: tuple[str, ...]
    gguf_arch: gguf.MODEL_ARCH
    tokenizer_pre: str  # llama.cpp's name for the split regex the tokenizer uses
    chat_format: str  # "harmony" or "template"
    add_bos: bool
    hparams: tuple[HParam, ...]
    rules: tuple[TensorRule, ...] = ()
    f32_tensors: tuple[gguf.MODEL_TENSOR, ...] = ()  # kept F32 whatever the file type
    expert_tensors: tuple[gguf.MODEL_TENSOR, ...] = ()
    rope_scaling: bool = False  # write RoPE scaling keys (linear, YaRN) from rope_parameters
    rope_freqs: bool = False  # Llama 3.1+ RoPE scaling (rope_type llama3) as a rope_freqs tensor
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def moe(self) -> bool:
        return bool(self.expert_tensors)

    @property
    def gguf_arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]


GPT_OSS = Architecture(
    name="gpt-oss",
    hf_architectures=("GptOssForCausalLM",),
    gguf_arch=gguf.MODEL_ARCH.GPT_OSS,
    tokenizer_pre="gpt-4o",
    chat_format="harmony",
    add_bos=False,
    hparams=(
        *COMMON_HPARAMS,
        ("add_expert_count", "num_local_experts", True),
        ("add_expert_used_count", "num_experts_per_tok", True),
        ("add_expert_feed_forward_length", "intermediate_size", True),
        ("add_sliding_window", "sliding_window", True),
    ),
    rules=(
        TensorRule(".self_attn.sinks", "copy", ("{p}.self_attn.sinks.weight",)),
        # BF16/F32 experts: [E, in, out] with gate/up interleaved along out
        TensorRule(".mlp.experts.gate_up_proj", "experts_split_interleaved",
                   ("{p}.mlp.experts.gate_proj.weight", "{p}.mlp.experts.up_proj.weight")),
        TensorRule(".mlp.experts.down_proj", "experts_transpose", ("{p}.mlp.experts.down_proj.weight",)),
        TensorRule(".mlp.experts.gate_up_proj_bias", "split_interleaved",
                   ("{p}.mlp.experts.gate_proj.bias", "{p}.mlp.experts.up_proj.bias")),
        TensorRule(".mlp.experts.down_proj_bias", "copy", ("{p}.mlp.experts.down_proj.bias",)),
        # MXFP4 experts (openai/gpt-oss-20b layout): moved bit-exact into ggml MXFP4
        TensorRule(".mlp.experts.gate_up_proj_blocks", "mxfp4_split_interleaved",
                   ("{p}.mlp.experts.gate_proj.weight", "{p}.mlp.experts.up_proj.weight")),
        TensorRule(".mlp.experts.down_proj_blocks", "mxfp4", ("{p}.mlp.experts.down_proj.weight",)),
        TensorRule(".mlp.experts.gate_up_proj_scales", "consumed", ()),
        TensorRule(".mlp.experts.down_proj_scales", "consumed", ()),
    ),
    f32_tensors=(gguf.MODEL_TENSOR.FFN_GATE_INP,),
    expert_tensors=(gguf.MODEL_TENSOR.FFN_GATE_EXP, gguf.MODEL_TENSOR.FFN_UP_EXP,
                    gguf.MODEL_TENSOR.FFN_DOWN_EXP),
    rope_scaling=True,
    notes={
        "yarn_truncate": "llama.cpp always rounds the YaRN correction range; configs with "
                         "rope truncate=false (gpt-oss) drift from transformers with position.",
    },
)

LLAMA = Architecture(
    name="llama",
    hf_architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    gguf_arch=gguf.MODEL_ARCH.LLAMA,
    tokenizer_pre="llama-bpe",
    chat_format="template",
    add_bos=True,
    hparams=(*COMMON_HPARAMS, ("add_vocab_size", "vocab_size", True), ("add_rope_dimension_count", "head_dim", False)),
    rope_scaling=True,
    rope_freqs=True,
    rules=(
        # llama.cpp's RoPE pairs dims (i, i+1); HF pairs (i, i+d/2): permute Q and K rows.
        TensorRule(".self_attn.q_proj.weight", "permute_heads:num_attention_heads"),
        TensorRule(".self_attn.k_proj.weight", "permute_heads:num_key_value_heads"),
    ),
)

ARCHITECTURES: tuple[Architecture, ...] = (GPT_OSS, LLAMA)


def tensor_pattern(kinds) -> str | None:
    """A regex matching the GGUF names (any layer, .weight) of the given gguf MODEL_TENSOR kinds."""
    import re

    if not kinds:
        return None
    names = [re.escape(gguf.TENSOR_NAMES[k]).replace(re.escape("{bid}"), r"\d+") for k in kinds]
    return rf"^(?:{'|'.join(names)})\.weight$"


def for_config(config: dict) -> Architecture:
    archs = config.get("architectures") or []
    for a in ARCHITECTURES:
        if any(x in a.hf_architectures for x in archs):
            return a
    supported = ", ".join(f"{x} ({a.name})" for a in ARCHITECTURES for x in a.hf_architectures)
    raise ArchitectureError(
        f"unsupported architecture {', '.join(archs) or config.get('model_type', '?')}; supported: {supported}"
    )


def by_name(name: str) -> Architecture:
    for a in ARCHITECTURES:
        if a.name == name:
            return a
    raise ArchitectureError(f"unknown architecture {name!r}; known: {', '.join(a.name for a in ARCHITECTURES)}")


def config_value(config: dict, path: str):
    """Dotted lookup; `rope_parameters.x` also reads transformers-4 style `rope_theta`/`rope_scaling`."""
    cur = config
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if path.startswith("rope_parameters."):
                key = path.split(".", 1)[1]
                legacy = {"rope_theta": config.get("rope_theta"), **(config.get("rope_scaling") or {})}
                return legacy.get(key)
            return None
        cur = cur[part]
    return cur
