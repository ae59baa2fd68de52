"""KV cache and compute buffers per runtime, as each one allocates them up front.

llama.cpp (src/llama-context.cpp, llama-kv-cache-iswa.cpp in llama-cpp-python 0.3.36):
n_ctx is rounded up to 256; every layer's K and V are [kv_heads*head_dim] f16 per cell; a model
with sliding-window layers (gpt-oss) gets two caches: full-attention layers hold n_ctx cells,
sliding layers either as many (`swa_full`, llama-cpp-python's default: it passes
llama_context_default_params' swa_full = true; edgeport's runtime sets false) or
pad256(min(n_ctx, n_swa + n_ubatch)) cells
(llama-cli / llama-server: swa_full = false). Concurrency N = N sequences (n_seq_max, not
unified): N streams of pad256(n_ctx) cells each.

Compute buffer: llama.cpp reserves the worst-case graph (a full n_ubatch of 512 tokens). Its
peak is either the logits stage, 4*u*(n_vocab + k*n_embd) bytes, or - without flash attention -
the attention stage, 4*u*(n_head*n_kv + mask cells + c(model)); with flash attention the
attention stage holds only f16 masks. The constants were fitted to llama.cpp's own
"compute buffer size" lines (tests/test_plan.py checks the formula against them for the tiny
models and for gpt-oss-20b/120b skeletons at 512-32768 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import PlanError
from .model import ModelSpec

PAD = 256
F16 = 2


def pad(n: int, to: int = PAD) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class LlamaCppOptions:
    """How the runtime creates its context. Defaults: edgeport's runtime (runtimes/llamacpp.py
    passes swa_full=False, as llama-cli / llama-server keep it; flash attention stays off)."""

    swa_full: bool = False
    flash_attn: bool = False
    n_ubatch: int = 512
    kv_bytes: int = F16  # per element (f16 cache; q8_0 would be ~1.06)

    @classmethod
    def server(cls) -> LlamaCppOptions:
        """llama-cli / llama-server defaults: small SWA cache, flash attention auto (on)."""
        return cls(swa_full=False, flash_attn=True)


@dataclass(frozen=True)
class KVCache:
    bytes: int
    per_layer: list[int]  # bytes per layer (for splitting across devices)
    cells_full: int
    cells_swa: int
    streams: int


def llamacpp_kv(spec: ModelSpec, n_ctx: int, n_seq: int, opt: LlamaCppOptions) -> KVCache:
    ctx_seq = pad(pad(n_ctx * n_seq) // n_seq)  # n_ctx total = n_ctx per sequence x n_seq
    u = min(opt.n_ubatch, ctx_seq)
    swa_cells = ctx_seq if opt.swa_full else pad(min(ctx_seq, spec.sliding_window + u))
    row = 2 * spec.dims["kv_dim"] * opt.kv_bytes  # K and V per cell
    # llama.cpp's own pattern (gpt-oss: even layers slide), whatever the config's layer_types
    per_layer = [(swa_cells if spec.arch.llama_cpp_swa(i) else ctx_seq) * row * n_seq
                 for i in range(spec.n_layers)]
    return KVCache(sum(per_layer), per_layer, ctx_seq, swa_cells if spec.sliding_window else 0, n_seq)


# Each architecture's `compute_fit` (edgeport/core/architectures.py): logits-stage k, attention-
# stage c in floats per token as (per n_embd, per kv_dim), fitted to llama.cpp's reservations
FA_PER_TOKEN_EMBD = 9.0  # flash attention: what besides the masks scales with u (tiny models only)


def llamacpp_compute(spec: ModelSpec, n_ctx: int, n_seq: int, opt: LlamaCppOptions) -> int:
    kv = llamacpp_kv(spec, n_ctx, n_seq, opt)
    u = min(opt.n_ubatch, kv.cells_full)
    d = spec.dims
    if spec.arch.compute_fit is None:
        raise PlanError(f"no llama.cpp compute-buffer fit for {spec.arch.name} (Architecture.compute_fit)")
    k_logits, c_embd, c_kv = spec.arch.compute_fit
    logits = 4 * u * (d["vocab"] + k_logits * d["hidden"])
    mask_cells = kv.cells_full + (kv.cells_swa if spec.sliding_window else 0)
    if opt.flash_attn:
        attn = 2 * u * mask_cells + 4 * u * FA_PER_TOKEN_EMBD * d["hidden"]
    else:
        # KQ scores over one stream's cells (concurrency adds streams, not graph width)
        attn = 4 * u * (d["heads"] * kv.cells_full + mask_cells + c_embd * d["hidden"] + c_kv * d["kv_dim"])
    return int(max(logits, attn))


def llamacpp_moe_cpu_compute(spec: ModelSpec, opt: LlamaCppOptions) -> int:
    """The CPU backend's buffer when experts run there (--n-cpu-moe): one ubatch of the routed
    experts' activations (gate, up, their product) and the layer input/output. Estimate."""
    d = spec.dims
    return 4 * opt.n_ubatch * (3 * d["experts_used"] * d["inter"] + 2 * d["hidden"])


def llamacpp_host_buffers(spec: ModelSpec, opt: LlamaCppOptions) -> int:
    """Host-side buffers with a GPU backend: the logits output buffer (n_vocab floats per
    sequence) and the host copy of a ubatch's inputs. Estimate."""
    d = spec.dims
    return 4 * d["vocab"] + 4 * opt.n_ubatch * 2 * d["hidden"]


# --- vLLM ----------------------------------------------------------------------------------

VLLM_BLOCK = 16


def vllm_kv(spec: ModelSpec, n_ctx: int, n_seq: int) -> int:
    """bf16 KV for max_model_len tokens per sequence; gpt-oss's sliding layers keep only their
    window (vLLM's hybrid KV cache manager) plus a block."""
    row = 2 * spec.dims["kv_dim"] * 2
    full = pad(n_ctx, VLLM_BLOCK)
    swa = min(full, pad(spec.sliding_window + VLLM_BLOCK, VLLM_BLOCK)) if spec.sliding_window else full
    types = spec.config.get("layer_types") or []
    cells = sum(swa if (types and types[i] == "sliding_attention") else full for i in range(spec.n_layers))
    return cells * row * n_seq


# vLLM's memory outside weights and KV, per GPU: CUDA context and libraries (~0.5-1 GiB, not
# counted by gpu_memory_utilization's profile), the profiled activation peak at
# max_num_batched_tokens (8192 by default) and CUDA graphs. An assumption, not measured here
# (no GPU in CI): vLLM's startup log reports these as "non_torch_memory", "activation peak"
# and "CUDA graph" lines on the actual card.
VLLM_OVERHEAD = 3 * 2**30
VLLM_GPU_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization: it never plans past 90 %


# --- onnxruntime-genai and Edge-LLM --------------------------------------------------------

def onnx_kv(spec: ModelSpec, n_ctx: int, n_seq: int, io_bytes: int) -> int:
    """onnxruntime-genai with a plain (not windowed) cache and past_present_share_buffer: each
    generator allocates K and V of [batch, kv_heads, max_length, head_dim] for every layer up
    front, in the graph's io dtype (fp32 on CPU graphs, fp16 for CUDA). runtimes/onnxrt.py sizes
    max_length by the request (prompt + max_tokens, at most its n_ctx), so a request that uses
    the whole context, the most a request can take, allocates this with max_length = n_ctx
    (the same bytes as runtimes.onnxrt.genai_kv_bytes; tests/test_onnx_memory.py)."""
    return spec.n_layers * 2 * spec.dims["kv_dim"] * io_bytes * n_ctx * n_seq


def onnx_activations(spec: ModelSpec, io_bytes: int, n_tokens: int = 512) -> int:
    """A prompt chunk's logits and hidden states, plus ~200 MiB of onnxruntime arenas and
    session state. Estimate, not measured."""
    d = spec.dims
    return io_bytes * n_tokens * (d["vocab"] + 4 * d["hidden"] + 2 * d["inter"]) + 200 * 2**20


def edgellm_kv(spec: ModelSpec, n_ctx: int, n_seq: int) -> int:
    """TensorRT Edge-LLM / TensorRT-LLM preallocate fp16 KV for every layer (export/jetson_kit.py)."""
    return spec.n_layers * 2 * spec.dims["kv_dim"] * F16 * n_ctx * n_seq


def edgellm_activations(spec: ModelSpec, n_tokens: int = 2048) -> int:
    """The engine's activation workspace for a prompt of max_input_len tokens (fp16) plus
    ~300 MiB of TensorRT runtime. Estimate, not measured (engines build only on the Orin)."""
    d = spec.dims
    return 2 * n_tokens * (4 * d["hidden"] + 3 * d["inter"]) + 2 * d["vocab"] * 4 + 300 * 2**20
