"""What each supported architecture is, as data: the one place a new family is added.

Tensor *names* come from gguf-py's TensorNameMap; this table holds only what differs per
family: hyper-parameter keys, how HF tensors are reshaped on the way to GGUF, the
tokenizer's pre-tokenizer name llama.cpp knows, the chat format, and what the memory
planner (edgeport/planning) needs to size the family without exporting it: its per-layer
tensors, llama.cpp's sliding-window pattern and compute-buffer fit, ONNX graph bytes.
"""

from __future__ import annotations

import re
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


# A decoder layer's weight as the planner lists it: (kind, HF name under model.layers.{i}.,
# shape in dimension names (out, in; experts first), the config flag that adds it or None)
LayerTensor = tuple[str, str, tuple[str, ...], str | None]


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
    # --- what the planner (edgeport/planning) reads ---
    layer_tensors: tuple[LayerTensor, ...] = ()  # every decoder layer's weights (planning/model.py)
    # llama.cpp's load_swa_pattern(n): layer i slides when i % n < n - 1; 0: no sliding-window
    # layers (llama.cpp's llama has none, whatever the config says)
    swa_pattern: int = 0
    # llama.cpp's compute-buffer fit (planning/kv.py): logits-stage k, attention-stage c per
    # n_embd and per kv_dim, fitted to llama.cpp's own reservations for the family
    compute_fit: tuple[float, float, float] | None = None
    # GGUF names that differ from planning/gguf_size.py's GGUF_NAMES, by planner tensor kind
    gguf_name_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # llama.cpp's LLM_TYPE_70B: the layer count at which a GQA model of the family is "70B"
    # (its attn_v then takes Q5_K instead of Q3_K/Q4_K); 0: the family has no such rule
    gguf_70b_layers: int = 0
    genai_graph_bytes_per_layer: int | None = None  # onnxruntime-genai model.onnx bytes per layer
    # a bundled checkpoint of the family (edgeport.models), whose tokenizer planning/measure.py
    # puts into skeleton GGUFs
    demo_model: str = ""

    @property
    def moe(self) -> bool:
        return bool(self.expert_tensors)

    def llama_cpp_swa(self, i: int) -> bool:
        """Whether llama.cpp gives layer i a sliding-window cache (its pattern, not the config's)."""
        n = self.swa_pattern
        return bool(n) and i % n < n - 1

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
    layer_tensors=(
        ("attn_norm", "input_layernorm.weight", ("hidden",), None),
        ("q", "self_attn.q_proj.weight", ("q_dim", "hidden"), None),
        ("q_bias", "self_attn.q_proj.bias", ("q_dim",), None),
        ("k", "self_attn.k_proj.weight", ("kv_dim", "hidden"), None),
        ("k_bias", "self_attn.k_proj.bias", ("kv_dim",), None),
        ("v", "self_attn.v_proj.weight", ("kv_dim", "hidden"), None),
        ("v_bias", "self_attn.v_proj.bias", ("kv_dim",), None),
        ("o", "self_attn.o_proj.weight", ("hidden", "q_dim"), None),
        ("o_bias", "self_attn.o_proj.bias", ("hidden",), None),
        ("sinks", "self_attn.sinks", ("heads",), None),
        ("ffn_norm", "post_attention_layernorm.weight", ("hidden",), None),
        ("router", "mlp.router.weight", ("experts", "hidden"), None),
        ("router_bias", "mlp.router.bias", ("experts",), None),
        # gate and up interleaved along 2*inter (openai/gpt-oss-20b's layout)
        ("gate_up_exps", "mlp.experts.gate_up_proj", ("experts", "inter2", "hidden"), None),
        ("gate_up_exps_bias", "mlp.experts.gate_up_proj_bias", ("experts", "inter2"), None),
        ("down_exps", "mlp.experts.down_proj", ("experts", "hidden", "inter"), None),
        ("down_exps_bias", "mlp.experts.down_proj_bias", ("experts", "hidden"), None),
    ),
    swa_pattern=2,  # even layers slide (llama_model_base::load_swa_pattern, pattern 2)
    compute_fit=(3.0, 6.6, 0.0),  # gpt-oss 20b/120b/tiny
    gguf_name_overrides={"ffn_norm": ("blk.{i}.post_attention_norm.weight",)},
    genai_graph_bytes_per_layer=9_500,  # measured: tiny gpt-oss genai int8 graph, 38.1 KB for 4 layers
    demo_model="tiny-gpt-oss",
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
    layer_tensors=(
        ("attn_norm", "input_layernorm.weight", ("hidden",), None),
        ("q", "self_attn.q_proj.weight", ("q_dim", "hidden"), None),
        ("q_bias", "self_attn.q_proj.bias", ("q_dim",), "attention_bias"),
        ("k", "self_attn.k_proj.weight", ("kv_dim", "hidden"), None),
        ("k_bias", "self_attn.k_proj.bias", ("kv_dim",), "attention_bias"),
        ("v", "self_attn.v_proj.weight", ("kv_dim", "hidden"), None),
        ("v_bias", "self_attn.v_proj.bias", ("kv_dim",), "attention_bias"),
        ("o", "self_attn.o_proj.weight", ("hidden", "q_dim"), None),
        ("o_bias", "self_attn.o_proj.bias", ("hidden",), "attention_bias"),
        ("ffn_norm", "post_attention_layernorm.weight", ("hidden",), None),
        ("gate", "mlp.gate_proj.weight", ("inter", "hidden"), None),
        ("gate_bias", "mlp.gate_proj.bias", ("inter",), "mlp_bias"),
        ("up", "mlp.up_proj.weight", ("inter", "hidden"), None),
        ("up_bias", "mlp.up_proj.bias", ("inter",), "mlp_bias"),
        ("down", "mlp.down_proj.weight", ("hidden", "inter"), None),
        ("down_bias", "mlp.down_proj.bias", ("hidden",), "mlp_bias"),
    ),
    compute_fit=(2.0, 5.0, 2.0),  # Llama-3-8B-shaped and tiny Llama skeletons
    gguf_70b_layers=80,  # llama-model.cpp: 80 layers, n_head != n_head_kv -> LLM_TYPE_70B
    genai_graph_bytes_per_layer=8_200,  # measured: tiny llama genai int8 graph, 33.0 KB for 4 layers
    demo_model="tiny-llama",
)

ARCHITECTURES: tuple[Architecture, ...] = (GPT_OSS, LLAMA)


def tensor_pattern(kinds) -> str | None:
    """A regex matching the GGUF names (any layer, .weight) of the given gguf MODEL_TENSOR kinds."""
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
