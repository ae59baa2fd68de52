"""GGUF artifact size, tensor by tensor: the type llama.cpp's quantizer gives each tensor and
what that type costs per block, plus the file's header, metadata and alignment.

The type rules are llama.cpp's `llama_tensor_get_type` / `tensor_type_fallback`
(src/llama-quant.cpp, as vendored in llama-cpp-python 0.3.36), restated here as data for the
schemes edgeport offers; tests/test_plan.py holds them to the files llama.cpp actually writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gguf

from edgeport.core.quant import K_FALLBACKS, SCHEMES

from .model import ModelSpec, Tensor

Q = gguf.GGMLQuantizationType
ALIGN = 32  # GGUF_DEFAULT_ALIGNMENT: every tensor's data starts (and is padded) to it

# HF kind -> GGUF names (a fused HF tensor splits in two); an architecture's
# gguf_name_overrides replace the ones that differ for it
GGUF_NAMES: dict[str, tuple[str, ...]] = {
    "embed": ("token_embd.weight",), "final_norm": ("output_norm.weight",), "lm_head": ("output.weight",),
    "attn_norm": ("blk.{i}.attn_norm.weight",),
    "q": ("blk.{i}.attn_q.weight",), "q_bias": ("blk.{i}.attn_q.bias",),
    "k": ("blk.{i}.attn_k.weight",), "k_bias": ("blk.{i}.attn_k.bias",),
    "v": ("blk.{i}.attn_v.weight",), "v_bias": ("blk.{i}.attn_v.bias",),
    "o": ("blk.{i}.attn_output.weight",), "o_bias": ("blk.{i}.attn_output.bias",),
    "sinks": ("blk.{i}.attn_sinks.weight",),
    "ffn_norm": ("blk.{i}.ffn_norm.weight",),
    "router": ("blk.{i}.ffn_gate_inp.weight",), "router_bias": ("blk.{i}.ffn_gate_inp.bias",),
    "gate_up_exps": ("blk.{i}.ffn_gate_exps.weight", "blk.{i}.ffn_up_exps.weight"),
    "gate_up_exps_bias": ("blk.{i}.ffn_gate_exps.bias", "blk.{i}.ffn_up_exps.bias"),
    "down_exps": ("blk.{i}.ffn_down_exps.weight",), "down_exps_bias": ("blk.{i}.ffn_down_exps.bias",),
    "gate": ("blk.{i}.ffn_gate.weight",), "gate_bias": ("blk.{i}.ffn_gate.bias",),
    "up": ("blk.{i}.ffn_up.weight",), "up_bias": ("blk.{i}.ffn_up.bias",),
    "down": ("blk.{i}.ffn_down.weight",), "down_bias": ("blk.{i}.ffn_down.bias",),
}

# the schemes whose type rules are restated here -> llama.cpp's default type for each
# (llama_ftype_get_default_type: the scheme's main type in edgeport.core.quant.SCHEMES)
SCHEME_DEFAULT = {s: SCHEMES[s][1] for s in ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "MXFP4_MOE")}
# tensor_type_fallback: a 256-block type on rows that are no multiple of 256 (the exporter's table)
FALLBACK = K_FALLBACKS
# tensor_allows_quantization: names llama.cpp never quantizes (beyond 1-D and non-".weight")
NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight")


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first
    type: str

    @property
    def nbytes(self) -> int:
        return tensor_bytes(Q[self.type], self.shape)


def tensor_bytes(t: Q, shape: tuple[int, ...]) -> int:
    block, size = gguf.GGML_QUANT_SIZES[t]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def layout(spec: ModelSpec, experts_mxfp4: bool) -> list[tuple[str, tuple[int, ...], Q]]:
    """Unquantized GGUF as export/gguf_convert.py writes it: (name, ggml shape, type) in
    llama.cpp's order (layer, then name). 1-D tensors, norms, biases and the router are F32;
    experts MXFP4 when the source has them or the bf16_experts policy quantizes them; rest F16."""
    names = {**GGUF_NAMES, **spec.arch.gguf_name_overrides}
    out = []
    if spec.arch.rope_freqs and _llama3_rope(spec.config):
        out.append(("rope_freqs.weight", (spec.dims["head_dim"] // 2,), Q.F32))
    for t in spec.tensors():
        parts = names[t.kind]
        shape = _split(t, len(parts))
        for n in parts:
            name = n.format(i=t.layer)
            out.append((name, tuple(reversed(shape)), _unquantized(spec, name, shape, experts_mxfp4)))
    return sorted(out, key=lambda x: (_layer(x[0]), x[0]))


def _split(t: Tensor, parts: int) -> tuple[int, ...]:
    if parts == 1:
        return t.shape
    e, rows, *rest = t.shape  # gate/up interleaved along rows
    return (e, rows // parts, *rest)


def _llama3_rope(cfg: dict) -> bool:
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    return str(rp.get("rope_type") or rp.get("type") or "").lower() == "llama3"


def _layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def _unquantized(spec: ModelSpec, name: str, shape: tuple[int, ...], experts_mxfp4: bool) -> Q:
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return Q.F32
    if ".ffn_gate_inp." in name:
        return Q.F32
    if "_exps." in name and (spec.is_mxfp4 or experts_mxfp4):
        return Q.MXFP4
    return Q.F16


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp: the first and last eighth of the layers, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def quantized_type(spec: ModelSpec, scheme: str, name: str, shape: tuple[int, ...], unq: Q,
                   i_attn_v: int, n_attn_v: int, keep_mxfp4: bool) -> Q:
    """The type llama.cpp's quantizer gives one tensor (llama_tensor_get_type for `scheme`)."""
    if len(shape) < 2 or not name.endswith("weight") or any(s in name for s in NEVER_QUANTIZED):
        return unq
    if keep_mxfp4 and "_exps.weight" in name:
        return _fallback(Q.MXFP4, shape[0])  # the exporter's per-tensor override
    default, n_expert, n_layer = SCHEME_DEFAULT[scheme], spec.dims["experts"], spec.n_layers
    t = default
    is_output = name == "output.weight" or (spec.tied and name == "token_embd.weight")
    if is_output:
        if scheme == "MXFP4_MOE" or shape[0] % gguf.GGML_QUANT_SIZES[default][0]:
            t = Q.Q8_0
        elif default != Q.Q8_0:
            t = Q.Q6_K
    elif scheme == "MXFP4_MOE":
        t = Q.MXFP4 if len(shape) > 2 and shape[2] > 1 else Q.Q8_0
    elif ".attn_v.weight" in name:
        if scheme in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_attn_v, n_attn_v):
            t = Q.Q6_K
        if _is_70b(spec) and t in (Q.Q3_K, Q.Q4_K):
            t = Q.Q5_K
        if n_expert == 8:
            t = Q.Q8_0
    elif ".attn_k.weight" in name and n_expert == 8:
        t = Q.Q8_0
    elif "ffn_down" in name:
        if scheme in ("Q4_K_M", "Q5_K_M") and use_more_bits(_layer(name), n_layer):
            t = Q.Q6_K
    elif ".attn_output.weight" in name and n_expert == 8 and scheme == "Q4_K_M":
        t = Q.Q5_K
    return _fallback(t, shape[0])


def _is_70b(spec: ModelSpec) -> bool:
    """llama.cpp's LLM_TYPE_70B: the family's 70B layer count, with grouped-query attention."""
    d = spec.dims
    return bool(spec.arch.gguf_70b_layers) and spec.n_layers == spec.arch.gguf_70b_layers \
        and d["heads"] != d["kv_heads"]


def _fallback(t: Q, ncols: int) -> Q:
    block = gguf.GGML_QUANT_SIZES[t][0]
    if ncols % block == 0:
        return t
    fb = FALLBACK.get(t, t)
    return fb if ncols % gguf.GGML_QUANT_SIZES[fb][0] == 0 else Q.F16


def quantized_layout(spec: ModelSpec, scheme: str = "Q4_K_M", experts: str = "mxfp4") -> list[GGUFTensor]:
    """Every tensor of the quantized GGUF with the type it will hold. `experts`: the bf16_experts
    policy (targets/cpu.toml) for a BF16 MoE source: "mxfp4" (default) or "kquant"; an MXFP4
    source keeps its experts either way."""
    experts_mxfp4 = spec.moe and not spec.is_mxfp4 and experts == "mxfp4"
    keep = spec.moe and (spec.is_mxfp4 or experts_mxfp4)
    base = layout(spec, experts_mxfp4)
    n_attn_v = sum(1 for n, _, _ in base if ".attn_v.weight" in n)
    out, i_attn_v = [], 0
    for name, shape, unq in base:
        t = quantized_type(spec, scheme, name, shape, unq, i_attn_v, n_attn_v, keep)
        if ".attn_v.weight" in name:
            i_attn_v += 1
        out.append(GGUFTensor(name, shape, t.name))
    return out


def metadata_bytes(spec: ModelSpec) -> int:
    """The GGUF key/value section: the tokenizer arrays (counted from tokenizer.json, or the
    formula in model.py) plus ~40 hyper-parameter, RoPE and sampling keys (~1.5 KB)."""
    tok = spec.tokenizer
    tokens = 8 * tok.n_vocab + tok.token_bytes  # string length prefix + bytes
    types = 4 * tok.n_vocab
    merges = 8 * tok.merges + tok.merge_bytes
    return 1536 + tokens + types + merges + tok.template_bytes + 3 * 40  # 3 array headers


def file_bytes(spec: ModelSpec, tensors: list[GGUFTensor]) -> int:
    """Header (magic, version, counts: 24 B) + metadata + tensor infos, padded to ALIGN, then
    each tensor's data padded to ALIGN."""
    infos = sum(8 + len(t.name) + 4 + 8 * len(t.shape) + 4 + 8 for t in tensors)
    head = 24 + metadata_bytes(spec) + infos
    return _pad(head) + sum(_pad(t.nbytes) for t in tensors)


def _pad(n: int) -> int:
    return n + (-n % ALIGN)
