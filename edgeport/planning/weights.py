"""Weight bytes per target, from the model's tensor list and each exporter's layout: what the
artifact's model file(s) hold and what the runtime keeps resident.

Every layout here was read off the artifacts edgeport's exporters write (tests/test_plan.py
holds each to its real files within 3 %). Graph-structure bytes of ONNX files (nodes, names)
are per-layer constants measured on the tiny exports: they matter only for tiny models.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from edgeport import targets

from . import PlanError, gguf_size
from .model import EXPERT_KINDS, ModelSpec, Tensor

MXFP4_BLOCK = 32


@dataclass
class Weights:
    target: str
    precision: str
    file_bytes: int  # the artifact's model file(s)
    resident_bytes: int  # what the runtime holds in (GPU or unified) memory
    layer_bytes: list[int] = field(default_factory=list)  # per decoder layer, resident
    expert_bytes: list[int] = field(default_factory=list)  # per layer, the MoE expert tensors
    input_bytes: int = 0  # token embedding (llama.cpp keeps it on the CPU)
    output_bytes: int = 0  # output norm + head
    files: str = ""  # which files file_bytes counts
    note: str = ""  # how exact, and what is assumed
    detail: dict = field(default_factory=dict)


def _accumulate(spec: ModelSpec, size) -> tuple[list[int], list[int], int, int]:
    """Per-layer, per-layer-expert, input (embedding) and output (norm, head) bytes, with
    `size(tensor)` giving each tensor's bytes in the target's layout."""
    layers, exps, inp, out = [0] * spec.n_layers, [0] * spec.n_layers, 0, 0
    for t in spec.tensors():
        n = size(t)
        if t.layer is not None:
            layers[t.layer] += n
            exps[t.layer] += n if t.kind.endswith(("_exps", "_exps_bias")) else 0
        elif t.kind == "embed":
            inp += n
        else:
            out += n
    return layers, exps, inp, out


# --- GGUF (cpu, apple) -------------------------------------------------------------------

def gguf_weights(spec: ModelSpec, target: str, scheme: str, experts: str) -> Weights:
    if scheme not in gguf_size.SCHEME_DEFAULT:
        raise PlanError(f"the planner knows llama.cpp's rules for {', '.join(gguf_size.SCHEME_DEFAULT)}, "
                        f"not {scheme!r}")
    ts = gguf_size.quantized_layout(spec, scheme, experts)
    layers = [0] * spec.n_layers
    exps = [0] * spec.n_layers
    counts: dict[str, int] = {}
    inp = out = 0
    for t in ts:
        counts[t.type] = counts.get(t.type, 0) + 1
        if t.name.startswith("blk."):
            i = int(t.name.split(".")[1])
            layers[i] += t.nbytes
            if "_exps." in t.name:  # llama.cpp's --n-cpu-moe regex: \.ffn_(up|down|gate)_exps
                exps[i] += t.nbytes
        elif t.name == "token_embd.weight":
            inp += t.nbytes
        else:
            out += t.nbytes
    fb = gguf_size.file_bytes(spec, ts)
    return Weights(target, scheme, fb, fb, layers, exps, inp, out, files="<model>.gguf",
                   note=f"llama.cpp's {scheme} type rules per tensor, exact block sizes; tokenizer metadata "
                        f"from {spec.tokenizer.source}",
                   detail={"tensor_types": counts, "experts": _expert_policy(spec, experts)})


def _expert_policy(spec: ModelSpec, experts: str) -> str | None:
    if not spec.moe:
        return None
    if spec.is_mxfp4:
        return "MXFP4 kept from the source (bit-exact)"
    return "BF16 -> MXFP4 (bf16_experts = mxfp4)" if experts == "mxfp4" else "BF16 -> llama.cpp k-quants (kquant)"


# --- vLLM: HF MXFP4 checkpoint -----------------------------------------------------------

def _vllm_tensors(spec: ModelSpec) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, safetensors dtype, shape) as export/hf_mxfp4.py writes them: experts as MXFP4
    blocks [E, out, in/32, 16] + scales [E, out, in/32], everything else in the source dtype."""
    fdt = {2: "BF16", 4: "F32"}[spec.dtype_bytes]
    out = []
    for t in spec.tensors():
        if t.kind in EXPERT_KINDS:
            e, rows, cols = t.shape
            out.append((t.name + "_blocks", "U8", (e, rows, cols // MXFP4_BLOCK, 16)))
            out.append((t.name + "_scales", "U8", (e, rows, cols // MXFP4_BLOCK)))
        else:
            out.append((t.name, fdt, t.shape))
    return out


def safetensors_bytes(tensors: list[tuple[str, str, tuple[int, ...]]]) -> int:
    """One file as export/safetensors_stream.py writes it: 8-byte length, JSON header padded
    to 8, raw data."""
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, dt, shape in tensors:
        n = math.prod(shape) * {"U8": 1, "I8": 1, "BF16": 2, "F16": 2, "F32": 4}[dt]
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + raw + (-raw % 8) + off


def _shards(tensors, big: int = 256 * 2**20) -> list[list]:
    """export/hf_mxfp4.py::shard_plan: one shard per layer, big embeddings alone, the rest."""
    layers: dict[int, list] = {}
    alone, rest = [], []
    for t in tensors:
        name = t[0]
        if name.startswith("model.layers."):
            layers.setdefault(int(name.split(".")[2]), []).append(t)
        elif math.prod(t[2]) * 2 > big:
            alone.append([t])
        else:
            rest.append(t)
    return [sorted(v) for _, v in sorted(layers.items())] + alone + ([sorted(rest)] if rest else [])


def vllm_weights(spec: ModelSpec) -> Weights:
    if not spec.moe:
        raise PlanError("target vllm takes MoE models only (vLLM's mxfp4 quantizes experts); use --target cpu")
    total = sum(safetensors_bytes(s) for s in _shards(_vllm_tensors(spec)))

    def size(t: Tensor) -> int:
        if t.kind in EXPERT_KINDS:  # 16 bytes of nibbles + 1 scale byte per 32 values
            return t.numel // MXFP4_BLOCK * 17
        return t.numel * spec.dtype_bytes

    layers, exps, inp, out = _accumulate(spec, size)
    return Weights("vllm", "mxfp4", total, sum(layers) + inp + out, layers, exps, inp, out,
                   files="model-*.safetensors",
                   note="exact layout of the MXFP4 checkpoint (experts 4.25 bits, rest in the source dtype)")


# --- ONNX ---------------------------------------------------------------------------------

# Graph-structure bytes per decoder layer (model.onnx without weights), measured on the tiny
# exports (4 layers): genai graphs per architecture (Architecture.genai_graph_bytes_per_layer),
# optimum Q/DQ 212 KB.
QDQ_GRAPH_PER_LAYER = 53_000


# dense projections (MatMul): graph builders fuse q/k/v or gate/up, which changes no byte count
LINEAR_KINDS = ("q", "k", "v", "o", "gate", "up", "down", "router", "lm_head")


def _nbits_bytes(n: int, k: int, bits: int, scale_bytes: int, block: int = 32) -> int:
    """MatMulNBits / QMoE block quantization: ceil(K/block) blocks of block*bits/8 bytes per
    output row, one scale per block (symmetric: no zero points)."""
    blocks = -(-k // block)
    return n * blocks * (block * bits // 8 + scale_bytes)


def onnx_weights(spec: ModelSpec, precision: str, ep: str) -> Weights:
    if ep == "tensorrt":
        return _qdq_weights(spec, precision)
    io = 2 if ep == "cuda" else 4  # the builder's io dtype: fp16 graphs for CUDA, fp32 for CPU
    bits = {"int8": 8, "int4": 4, "fp32": None}[precision]

    def size(t: Tensor) -> int:
        if t.kind in LINEAR_KINDS:
            return _nbits_bytes(t.shape[0], t.shape[1], bits, io) if bits else t.numel * 4
        if t.kind in EXPERT_KINDS:  # QMoE: [E, N, K] 8/4-bit, one scale per 32 (fp32 graph: MoE, fp32)
            e, rows, cols = t.shape
            return e * _nbits_bytes(rows, cols, bits, io) if bits else t.numel * 4
        return t.numel * io  # embeddings, norms, biases, sinks

    layers, exps, inp, out = _accumulate(spec, size)
    d = spec.dims
    rope = 2 * spec.config.get("max_position_embeddings", 4096) * (d["head_dim"] // 2) * io  # cos/sin caches
    if (per_layer := spec.arch.genai_graph_bytes_per_layer) is None:
        raise PlanError(f"no measured genai graph size for {spec.arch.name} "
                        "(Architecture.genai_graph_bytes_per_layer)")
    graph = 4_000 + per_layer * spec.n_layers
    data = sum(layers) + inp + out + rope
    return Weights("onnx", precision, data + graph, data, layers, exps, inp, out + rope,
                   files="model.onnx + model.onnx.data",
                   note="onnxruntime-genai builder layout: MatMulNBits/QMoE block 32, "
                        f"{'fp16' if io == 2 else 'fp32'} scales, embeddings and cos/sin caches "
                        f"(max_position_embeddings); graph bytes measured per layer"
                        + ("; CUDA (fp16) graphs not exported in the tests: unverified" if ep == "cuda" else ""),
                   detail={"rope_cache_bytes": rope})


def _qdq_weights(spec: ModelSpec, precision: str) -> Weights:
    if spec.moe:
        raise PlanError("--ep tensorrt does not take gpt-oss (see targets/onnx.toml); use --ep cpu or cuda")

    def size(t: Tensor) -> int:
        if t.kind in LINEAR_KINDS and precision == "int8":
            return t.numel + t.shape[0] * (4 + 1)  # int8 weight, fp32 scale + int8 zero point per channel
        return t.numel * 4

    layers, exps, inp, out = _accumulate(spec, size)
    data = sum(layers) + inp + out
    return Weights("onnx", precision, data + QDQ_GRAPH_PER_LAYER * spec.n_layers, data, layers, exps, inp, out,
                   files="model.onnx + model.onnx.data",
                   note="optimum-onnx standard ops, per-channel int8 behind DequantizeLinear; graph bytes "
                        "measured per layer")


# --- Jetson -------------------------------------------------------------------------------

# Edge-LLM graph bytes per layer (plugin ops, Q/DQ nodes), measured on the tiny exports.
EDGELLM_GRAPH_PER_LAYER = {"int8": 101_700, "int8-w8a16": 85_200, "int4": 55_800, "fp16": 41_000}
AWQ_GROUP = 128
# linears that read the same input share one SmoothQuant smoothing vector (pre_quant_scale)
SHARED_INPUT = {"k": "q", "v": "q", "up": "gate"}


def jetson_weights(spec: ModelSpec, precision: str, jetpack: str) -> Weights:
    if spec.moe:
        raise PlanError("target jetson does not build gpt-oss (targets/jetson.toml [fallback]); "
                        "plan --target vllm or --target cpu for an Orin")
    if jetpack == "6":
        return _trtllm_weights(spec)
    layers, exps, _, out = _accumulate(spec, lambda t: _edgellm_tensor(t, precision))
    d = spec.dims
    embedding_file = d["vocab"] * d["hidden"] * 2 + 88  # llm/embedding.safetensors (fp16), header
    data = sum(layers) + out  # model.onnx.data: lm_head fp16, norms fp16, linears per precision
    graph = EDGELLM_GRAPH_PER_LAYER[precision] * spec.n_layers
    return Weights("jetson", precision, data + graph + embedding_file, data + embedding_file, layers, exps,
                   embedding_file, out, files="llm/ (model.onnx, .data, embedding.safetensors)",
                   note="TensorRT Edge-LLM layout: int8 per-channel (fp32 scales, fp16 smoothing), int4 AWQ "
                        f"group {AWQ_GROUP} where both dims divide it (else fp16), fp16 head; the engine built on "
                        "the Orin holds these weights")


def _edgellm_tensor(t: Tensor, precision: str) -> int:
    if t.kind == "embed":
        return 0  # in embedding.safetensors
    if t.kind not in ("q", "k", "v", "o", "gate", "up", "down") or precision == "fp16":
        return t.numel * 2
    n, k = t.shape
    if precision == "int4":
        if n % AWQ_GROUP or k % AWQ_GROUP:
            return t.numel * 2
        return t.numel // 2 + n * (k // AWQ_GROUP) * 2 + k * 2  # packed int4, fp16 scales, smoothing
    smooth = 0 if t.kind in SHARED_INPUT else k * 2
    act_scale = 4 if precision == "int8" and t.kind not in SHARED_INPUT else 0
    return t.numel + n * 4 + smooth + act_scale


def _trtllm_weights(spec: ModelSpec) -> Weights:
    """TensorRT-LLM v0.12 checkpoint: FP16 weights (q/k/v fused); trtllm-build quantizes the
    linears to int8 W8A16 on the Orin, so the engine holds about half of them."""
    names = {"q": "attention.qkv", "o": "attention.dense", "gate": "mlp.fc", "up": "mlp.gate", "down": "mlp.proj",
             "attn_norm": "input_layernorm", "ffn_norm": "post_layernorm"}
    glob = {"embed": "transformer.vocab_embedding.weight", "final_norm": "transformer.ln_f.weight",
            "lm_head": "lm_head.weight"}
    qkv_rows = spec.dims["q_dim"] + 2 * spec.dims["kv_dim"]
    tensors = [(glob[t.kind] if t.layer is None else f"transformer.layers.{t.layer}.{names[t.kind]}.weight", "F16",
                (qkv_rows, t.shape[1]) if t.kind == "q" else t.shape)
               for t in spec.tensors() if t.kind not in ("k", "v")]

    def resident(t: Tensor) -> int:  # int8 linears + an fp16 scale per output channel, the rest fp16
        if t.kind in ("q", "k", "v", "o", "gate", "up", "down"):
            return t.numel + t.shape[0] * 2
        return t.numel * 2

    layers, exps, inp, out = _accumulate(spec, resident)
    return Weights("jetson", "int8", safetensors_bytes(tensors), sum(layers) + inp + out, layers, exps, inp, out,
                   files="trtllm_checkpoint/rank0.safetensors",
                   note="file: FP16 checkpoint (exact layout); resident: int8 W8A16 linears + fp16 per-channel "
                        "scales as trtllm-build makes them on the Orin (not measurable here)")


def estimate(spec: ModelSpec, target: str, precision: str | None = None, policy: dict | None = None) -> Weights:
    """The artifact `edgeport export --target TARGET` would write, sized from the config: the
    profile's defaults, overridden by `precision` and export policy (bf16_experts, ep, jetpack)."""
    profile = targets.load(target)
    opts = {**profile.runtime_options, **profile.architectures.get(spec.arch.name, {}), **(policy or {})}
    precision = precision or profile.quantization
    if profile.format == "gguf":
        return gguf_weights(spec, target, precision, opts.get("bf16_experts", "mxfp4"))
    if profile.format == "hf-mxfp4":
        return vllm_weights(spec)
    if profile.format == "onnx":
        return onnx_weights(spec, precision, opts.get("ep", "cpu"))
    return jetson_weights(spec, precision, str(opts.get("jetpack", "7.2")))
