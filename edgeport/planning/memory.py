"""The plan: weights, KV cache and runtime buffers of one model in one target format, placed
on one device's memory pools, the verdict, and what to change when it does not fit.

Pools: "gpu" (per-GPU memory x GPUs used, discrete devices), "ram" (system RAM), "unified"
(Apple silicon, Jetson). Each pool's usable bytes come from planning/devices.toml.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgeport import targets

from . import PlanError, devices, kv, model, weights
from . import suggest as suggest_changes  # suggest re-plans through this module: both import each other as modules
from .devices import Device
from .kv import LlamaCppOptions
from .model import ModelSpec

GIB = 2**30
DEFAULT_CONTEXT = 4096


@dataclass
class Pool:
    usable: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def need(self) -> int:
        return sum(self.parts.values())

    @property
    def headroom(self) -> int:
        return self.usable - self.need


@dataclass
class Plan:
    model: str
    architecture: str
    params: int
    device: str
    target: str
    precision: str
    runtime: str
    context: int
    concurrency: int
    options: dict
    weights: weights.Weights
    kv_bytes: int
    buffers_bytes: int
    pools: dict[str, Pool]
    notes: list[str] = field(default_factory=list)
    suggestions: list[dict] = field(default_factory=list)
    reference: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return all(p.headroom >= 0 for p in self.pools.values())

    @property
    def binding(self) -> str:
        """The pool with the least headroom: the one that decides."""
        return min(self.pools, key=lambda k: self.pools[k].headroom)

    @property
    def headroom(self) -> int:
        return self.pools[self.binding].headroom

    def verdict(self) -> str:
        p = self.pools[self.binding]
        where = {"gpu": "GPU memory", "ram": "RAM", "unified": "unified memory"}[self.binding]
        if self.fits:
            return (f"fits: {_gib(p.need)} of {_gib(p.usable)} GiB usable {where}, "
                    f"{_gib(p.headroom)} GiB headroom")
        fix = next((s for s in self.suggestions if s["fits"]), None)
        return (f"does not fit: needs {_gib(p.need)} GiB, {where} offers {_gib(p.usable)} GiB"
                + (f"; fits with {fix['change']}" if fix else "; no change edgeport knows makes it fit"))

    def to_json(self) -> dict:
        w = asdict(self.weights)
        for k in ("layer_bytes", "expert_bytes"):
            w.pop(k)
        return {
            "model": {"name": self.model, "architecture": self.architecture, "params": self.params},
            "device": self.device, "target": self.target, "precision": self.precision, "runtime": self.runtime,
            "context": self.context, "concurrency": self.concurrency, "options": self.options,
            "weights": w, "kv_cache_bytes": self.kv_bytes, "runtime_buffers_bytes": self.buffers_bytes,
            "pools": {k: {"need_bytes": p.need, "usable_bytes": p.usable, "headroom_bytes": p.headroom,
                          "parts": p.parts} for k, p in self.pools.items()},
            "fits": self.fits, "binding_pool": self.binding, "headroom_bytes": self.headroom,
            "verdict": self.verdict(), "suggestions": self.suggestions, "notes": self.notes,
            "reference_decode": self.reference or None,
        }


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def plan(model_path: str, device: str, target: str | None = None, context: int | None = None,
         concurrency: int = 1, quantization: str | None = None, llama_server: bool = False,
         suggest: bool = True) -> Plan:
    spec = model.load(model_path)
    dev = devices.load(device)
    if concurrency < 1 or (context is not None and context < 1):
        raise PlanError("--context and --concurrency must be positive")
    return plan_for(spec, dev, target, context, concurrency, quantization, llama_server, suggest)


def plan_for(spec: ModelSpec, dev: Device, target: str | None = None, context: int | None = None,
             concurrency: int = 1, quantization: str | None = None, llama_server: bool = False,
             suggest: bool = True) -> Plan:
    notes = []
    target = target or dev.recommended_target
    if target not in targets.available():
        raise PlanError(f"unknown target {target!r}; targets: {', '.join(targets.available())}")
    profile = targets.load(target)
    if spec.arch.name in profile.fallback:
        fb = profile.fallback[spec.arch.name]["target"]
        notes.append(f"target {target} cannot build {spec.arch.name}; its profile's fallback, {fb}, is planned")
        target, profile = fb, targets.load(fb)
    if spec.arch.name in profile.unsupported:
        raise PlanError(f"target {target} does not take {spec.arch.name}: {profile.unsupported[spec.arch.name]}")
    ctx = context or profile.runtime_options.get("n_ctx") or profile.runtime_options.get("max_model_len") \
        or DEFAULT_CONTEXT
    precision = quantization or profile.quantization
    if ctx > (trained := spec.config.get("max_position_embeddings") or ctx):
        notes.append(f"context {ctx} is beyond the model's max_position_embeddings ({trained})")
    p = BUILDERS[profile.format](spec, dev, profile, precision, ctx, concurrency, llama_server)
    p.notes = notes + p.notes
    p.reference = dev.reference if dev.reference.get("model") == spec.name else {}
    if suggest and not p.fits:

        p.suggestions = suggest_changes.suggestions(p, spec, dev)
    return p


def _base(spec, dev, target, precision, runtime, ctx, n, options, w, kv_bytes, buffers, pools, notes) -> Plan:
    return Plan(spec.name, spec.arch.name, spec.params(), dev.name, target, precision, runtime, ctx, n, options,
                w, kv_bytes, buffers, pools, notes)


# --- llama.cpp (cpu, apple targets) --------------------------------------------------------

def _llamacpp(spec, dev, profile, precision, ctx, n, server, *, n_cpu_moe=0, n_gpu_layers=None,
              n_ubatch=512) -> Plan:
    opt = LlamaCppOptions.server() if server else LlamaCppOptions()
    if n_ubatch != opt.n_ubatch:
        opt = LlamaCppOptions(opt.swa_full, opt.flash_attn, n_ubatch)
    experts = profile.architectures.get(spec.arch.name, {}).get("bf16_experts", "mxfp4")
    w = weights.gguf_weights(spec, profile.name, precision, experts)
    cache = kv.llamacpp_kv(spec, ctx, n, opt)
    compute = kv.llamacpp_compute(spec, ctx, n, opt)
    runtime = ("llama.cpp (llama-server / llama-cli defaults)" if server else
               "llama.cpp via llama-cpp-python (edgeport's runtimes/llamacpp.py)")
    options = {"n_ctx": ctx, "n_seq": n, "swa_full": opt.swa_full, "flash_attn": opt.flash_attn,
               "n_ubatch": opt.n_ubatch, "kv_cache_type": "f16"}
    notes = [_swa_note(spec, opt)] if spec.sliding_window else []
    if dev.memory != "discrete":
        pool = "unified" if dev.memory == "unified" else "ram"
        pools = {pool: Pool(dev.pool_usable, {"weights": w.resident_bytes, "kv_cache": cache.bytes,
                                              "compute_buffer": compute})}
        return _base(spec, dev, profile.name, precision, runtime, ctx, n, options, w, cache.bytes, compute, pools,
                     notes)
    L = spec.n_layers
    first_gpu = 0 if n_gpu_layers is None else max(L - n_gpu_layers, 0)
    on_gpu = range(first_gpu, L)
    moved = sum(w.expert_bytes[i] for i in range(min(n_cpu_moe, L)) if i in on_gpu)
    output_on_gpu = n_gpu_layers is None or n_gpu_layers > L
    gpu = {"weights": sum(w.layer_bytes[i] for i in on_gpu) - moved + (w.output_bytes if output_on_gpu else 0),
           "kv_cache": sum(cache.per_layer[i] for i in on_gpu), "compute_buffer": compute * dev.gpus}
    ram = {"weights": w.input_bytes + moved + sum(w.layer_bytes[i] for i in range(first_gpu))
           + (0 if output_on_gpu else w.output_bytes),
           "kv_cache": sum(cache.per_layer[i] for i in range(first_gpu)),
           "host_buffers": kv.llamacpp_host_buffers(spec, opt)
           + (kv.llamacpp_moe_cpu_compute(spec, opt) if moved else 0) + (compute if first_gpu else 0)}
    options.update(n_gpu_layers=-1 if n_gpu_layers is None else n_gpu_layers, n_cpu_moe=n_cpu_moe)
    pools = {"gpu": Pool(dev.gpu_usable * dev.gpus, gpu), "ram": Pool(dev.ram_usable, ram)}
    notes.append("token embeddings stay in RAM (llama.cpp keeps the input layer on the CPU)")
    return _base(spec, dev, profile.name, precision, runtime, ctx, n, options, w, cache.bytes, compute, pools, notes)


def _swa_note(spec: ModelSpec, opt: LlamaCppOptions) -> str:
    if opt.swa_full:
        return (f"sliding-window layers keep a full-size KV cache (swa_full: llama-cpp-python's default, which "
                f"runtimes/llamacpp.py keeps); llama-server/llama-cli keep only pad256({spec.sliding_window} + "
                "n_ubatch) cells for them (--llama-server plans that)")
    return (f"sliding-window layers keep pad256(min(n_ctx, {spec.sliding_window} + n_ubatch)) cells "
            "(llama.cpp's small SWA cache, swa_full = false)")


# --- vLLM ------------------------------------------------------------------------------------

def _vllm(spec, dev, profile, precision, ctx, n, server, *, tp: int | None = None, pp: int = 1) -> Plan:
    if dev.memory == "cpu" or dev.gpu_arch == "apple":
        raise PlanError(f"target vllm needs a CUDA GPU; {dev.name} has none (plan --target cpu or apple)")
    tp = tp or profile.runtime_options.get("tensor_parallel_size", 1)
    w = weights.vllm_weights(spec)
    cache = kv.vllm_kv(spec, ctx, n)
    util = kv.VLLM_GPU_UTILIZATION
    options = {"max_model_len": ctx, "max_num_seqs": n, "tensor_parallel_size": tp, "gpu_memory_utilization": util}
    stage_weights, stage_layers = _largest_stage(w, spec.n_layers, pp)
    if pp > 1:
        options["pipeline_parallel_size"] = pp
    parts = {"weights": stage_weights // tp, "kv_cache": cache * stage_layers // spec.n_layers // tp,
             "runtime": kv.VLLM_OVERHEAD}
    if dev.memory == "unified":
        pools = {"unified": Pool(int(dev.unified_memory_gib * GIB * min(util, dev.usable_fraction)), parts)}
    else:
        if tp > dev.gpus:
            raise PlanError(f"{dev.name} has {dev.gpus} GPU(s), not {tp}")
        pools = {"gpu": Pool(int(dev.gpu_memory_gib * GIB * min(util, dev.usable_fraction)), parts)}
    stages = (f"pipeline parallel {pp}: the largest stage holds {stage_layers} of {spec.n_layers} layers; "
              if pp > 1 else "")
    notes = [f"per GPU with {stages}tensor parallel {tp}: weights and KV split {tp} ways; vLLM plans for "
             f"{int(util * 100)} % of GPU memory (gpu_memory_utilization) and needs KV room for one "
             "max_model_len sequence; runtime overhead (CUDA context, activations, CUDA graphs) assumed "
             f"{kv.VLLM_OVERHEAD // GIB} GiB per GPU (not measured here)"]
    return _base(spec, dev, "vllm", precision, "vLLM (--quantization mxfp4)", ctx, n, options, w, cache,
                 kv.VLLM_OVERHEAD, pools, notes)


def pp_stages(n_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage as vLLM assigns them (vllm/distributed/utils.py get_pp_indices):
    n_layers // pp each, the remainder one each to the stages before the last."""
    if not 1 <= pp <= n_layers:
        raise PlanError(f"pipeline parallel {pp} needs 1 to {n_layers} stages ({n_layers} layers)")
    parts = [n_layers // pp] * pp
    for i in range(2, n_layers % pp + 2):
        parts[-i] += 1
    return parts


def _largest_stage(w: weights.Weights, n_layers: int, pp: int) -> tuple[int, int]:
    """(resident bytes, layers) of the heaviest pipeline stage: its layers, plus the embedding on
    the first stage and the final norm and head on the last (all of it when pp = 1)."""
    if pp == 1:
        return w.resident_bytes, n_layers
    best, start = (0, 0), 0
    for i, k in enumerate(pp_stages(n_layers, pp)):
        b = sum(w.layer_bytes[start:start + k]) + (w.input_bytes if i == 0 else 0) \
            + (w.output_bytes if i == pp - 1 else 0)
        best, start = max(best, (b, k)), start + k
    return best


# --- onnxruntime(-genai) ----------------------------------------------------------------------

def _onnx(spec, dev, profile, precision, ctx, n, server) -> Plan:
    ep = "cuda" if dev.memory == "discrete" or dev.is_jetson else "cpu"
    w = weights.onnx_weights(spec, precision, ep)
    io = 2 if ep == "cuda" else 4
    cache = kv.onnx_kv(spec, ctx, n, io)
    act = kv.onnx_activations(spec, io)
    parts = {"weights": w.resident_bytes, "kv_cache": cache, "runtime": act}
    if dev.memory == "discrete":
        pools = {"gpu": Pool(dev.gpu_usable, parts)}
    else:
        pools = {"unified" if dev.memory == "unified" else "ram": Pool(dev.pool_usable, parts)}
    notes = [f"execution provider {ep}: KV cache in the graph's {'fp16' if io == 2 else 'fp32'} io dtype for "
             f"every layer at max_length (plain cache, windowed_kv_cache=false), allocated per request up front; "
             f"the runtime sizes max_length by the request (prompt + max_tokens, at most --ctx), planned here at "
             f"the largest, {ctx} tokens; runtime arena estimated"]
    return _base(spec, dev, "onnx", precision, f"onnxruntime-genai ({ep})", ctx, n, {"ep": ep, "max_length": ctx},
                 w, cache, act, pools, notes)


# --- Jetson (TensorRT Edge-LLM / TensorRT-LLM) ---------------------------------------------------

def _jetson(spec, dev, profile, precision, ctx, n, server) -> Plan:
    if not dev.is_jetson:
        raise PlanError(f"target jetson builds engines for Jetson Orin; {dev.name} is not one")
    jetpack = profile.runtime_options.get("jetpack", "7.2")
    w = weights.jetson_weights(spec, precision, jetpack)
    cache = kv.edgellm_kv(spec, ctx, n)
    act = kv.edgellm_activations(spec, min(ctx, 2048))
    pools = {"unified": Pool(dev.pool_usable, {"weights": w.resident_bytes, "kv_cache": cache, "runtime": act})}
    notes = ["the engine preallocates fp16 KV for every layer (max_kv_cache_capacity = context x concurrency); "
             "activation workspace estimated"]
    return _base(spec, dev, "jetson", precision, "TensorRT Edge-LLM" if jetpack != "6" else "TensorRT-LLM v0.12",
                 ctx, n, {"jetpack": jetpack, "max_kv_cache_capacity": ctx * n}, w, cache, act, pools, notes)


BUILDERS = {"gguf": _llamacpp, "hf-mxfp4": _vllm, "onnx": _onnx, "jetson": _jetson}
