"""What to change when a plan does not fit, each option re-planned so it is known to fit (or
said not to): MoE experts or layers on the CPU, the runtime's own settings, a shorter
context, vLLM tensor parallelism, a smaller precision or another target."""

from __future__ import annotations

from edgeport import targets

from . import PlanError, memory
from .devices import GIB, Device
from .model import ModelSpec

CTX_STEP = 256


def suggestions(p: memory.Plan, spec: ModelSpec, dev: Device) -> list[dict]:
    profile = targets.load(p.target)
    server = p.options.get("swa_full") is False
    out: list[dict] = []
    if profile.format == "gguf":
        if dev.memory == "discrete":
            if spec.moe:
                out += _n_cpu_moe(p, spec, dev, profile, server)
            out += _n_gpu_layers(p, spec, dev, profile, server)
        if not server:
            out += _runtime_settings(p, spec, dev)
        out += _smaller_ubatch(p, spec, dev, profile, server)
        if dev.gpu_arch == "apple":
            out += _wired_limit(p, dev)
    if profile.format == "hf-mxfp4":
        out += _tensor_parallel(p, spec, dev, profile)
    out += _shorter_context(p, spec, dev, server)
    out += _other_precision_or_target(p, spec, dev)
    return sorted(out, key=lambda s: not s["fits"])


def _entry(change: str, what: str, q: memory.Plan | None, command: str | None = None, **extra) -> dict:
    d = {"change": change, "what": what, "fits": bool(q and q.fits), "command": command, **extra}
    if q is not None:
        d["need_bytes"] = {k: v.need for k, v in q.pools.items()}
        d["headroom_bytes"] = q.headroom
    return d


def _n_cpu_moe(p, spec, dev, profile, server) -> list[dict]:
    """The smallest N whose experts, moved to RAM, let the rest fit on the GPU."""
    for n in range(1, spec.n_layers + 1):
        q = memory._llamacpp(spec, dev, profile, p.precision, p.context, p.concurrency, server, n_cpu_moe=n)
        if q.pools["gpu"].headroom >= 0:
            ram = q.pools["ram"]
            return [_entry(f"--n-cpu-moe {n}",
                           f"keep the MoE experts of the first {n} of {spec.n_layers} layers in RAM "
                           f"({(ram.parts['weights']) / GIB:.1f} GiB of RAM for weights, "
                           f"{ram.need / GIB:.1f} GiB in all, {dev.ram_usable / GIB:.1f} usable); decode slows "
                           "with every layer moved. llama-server/llama-cli option: llama-cpp-python "
                           "(edgeport's runtime) has no equivalent",
                           q, f"llama-server -m <model>.gguf -c {p.context} -ngl 99 --n-cpu-moe {n}", value=n,
                           ram_need_bytes=ram.need)]
    return []


def _n_gpu_layers(p, spec, dev, profile, server) -> list[dict]:
    """The most layers that fit on the GPU; the rest (and their KV) run on the CPU."""
    best = None
    for m in range(spec.n_layers, 0, -1):
        q = memory._llamacpp(spec, dev, profile, p.precision, p.context, p.concurrency, server, n_gpu_layers=m)
        if q.pools["gpu"].headroom >= 0:
            best = (m, q)
            break
    if not best:
        return []
    m, q = best
    rest = ("the output head stays on the CPU" if m == spec.n_layers else
            "the rest and their KV cache run on the CPU (much slower per token)")
    return [_entry(f"n_gpu_layers {m}", f"offload the last {m} of {spec.n_layers} layers; {rest}", q,
                   f"llama-server -m <model>.gguf -c {p.context} -ngl {m}  (llama-cpp-python: n_gpu_layers={m})",
                   value=m)]


def _runtime_settings(p, spec, dev) -> list[dict]:
    q = memory.plan_for(spec, dev, p.target, p.context, p.concurrency, p.precision, llama_server=True, suggest=False)
    saved = p.pools[p.binding].need - q.pools[q.binding].need
    if saved <= 0:
        return []
    return [_entry("flash attention + small SWA cache",
                   f"run with llama.cpp's CLI/server defaults (flash attention on, swa_full off): "
                   f"{saved / GIB:.1f} GiB less; in llama-cpp-python: Llama(..., flash_attn=True, swa_full=False)",
                   q, f"llama-server -m <model>.gguf -c {p.context} -fa on")]


def _smaller_ubatch(p, spec, dev, profile, server) -> list[dict]:
    """The compute buffer scales with the micro-batch (the logits of n_ubatch tokens): a smaller
    one trades prompt-processing speed for memory."""
    for u in (256, 128):
        q = memory._llamacpp(spec, dev, profile, p.precision, p.context, p.concurrency, server, n_ubatch=u)
        if q.fits:
            return [_entry(f"--ubatch-size {u}", f"a {u}-token micro-batch shrinks llama.cpp's compute buffer "
                           f"({p.buffers_bytes / GIB:.2f} -> {q.buffers_bytes / GIB:.2f} GiB); prompts process "
                           f"slower (llama-cpp-python: n_ubatch={u})", q,
                           f"llama-server -m <model>.gguf -c {p.context} -ub {u}", value=u)]
    return []


def _wired_limit(p, dev) -> list[dict]:
    need = p.pools["unified"].need
    total = dev.unified_memory_gib * GIB
    if need > total - 4 * GIB:
        return []
    mb = int((need + GIB) / 2**20)
    return [{"change": f"iogpu.wired_limit_mb={mb}", "fits": True, "command": f"sudo sysctl iogpu.wired_limit_mb={mb}",
             "what": "let Metal wire more of the unified memory than macOS's default (leaves "
                     f"{(total - need - GIB) / GIB:.1f} GiB to macOS; resets at reboot)"}]


def _tensor_parallel(p, spec, dev, profile) -> list[dict]:
    for tp in (2, 4, 8):
        if dev.memory == "discrete" and tp <= dev.gpus:
            q = memory._vllm(spec, dev, profile, p.precision, p.context, p.concurrency, False, tp=tp)
            if q.fits:
                return [_entry(f"--tensor-parallel-size {tp}", f"split weights and KV over {tp} of the "
                               f"{dev.gpus} GPUs", q, f"vllm serve <artifact> --quantization mxfp4 "
                               f"--tensor-parallel-size {tp} --max-model-len {p.context}", value=tp)]
    if dev.memory != "discrete":
        return []
    for tp in (2, 4, 8):  # how many GPUs like this one it would take
        fake = Device(**{**dev.__dict__, "gpus": tp})
        q = memory._vllm(spec, fake, profile, p.precision, p.context, p.concurrency, False, tp=tp)
        if q.fits:
            return [{"change": f"{tp} GPUs like this one (vLLM --tensor-parallel-size {tp})", "fits": False,
                     "what": f"{dev.name} has {dev.gpus}; with {tp} such GPUs each needs "
                             f"{q.pools['gpu'].need / GIB:.1f} GiB", "command": None, "value": tp}]
    return []


def _shorter_context(p, spec, dev, server) -> list[dict]:
    def fits(c: int) -> memory.Plan:
        return memory.plan_for(spec, dev, p.target, c, p.concurrency, p.precision, server, suggest=False)

    lo, hi = 0, p.context // CTX_STEP  # largest k with fits(k * CTX_STEP), k < context / step
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid * CTX_STEP < p.context and fits(mid * CTX_STEP).fits:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return []
    c = lo * CTX_STEP
    return [_entry(f"--context {c}", f"the longest context that fits ({c} tokens instead of {p.context})", fits(c),
                   value=c)]


def _other_precision_or_target(p, spec, dev) -> list[dict]:
    """A smaller precision of the same target, or the target that runs MoE models off a small GPU."""
    options = {"onnx": ("int4",), "jetson": ("int4",)}.get(p.target, ())
    tries = [(p.target, prec) for prec in options if prec != p.precision]
    if p.target == "vllm":
        tries.append(("cpu", None))  # GGUF with llama.cpp: smaller, and experts can live in RAM
    if p.target in ("cpu", "apple") and dev.memory == "discrete" and dev.gpus > 1 and spec.moe:
        tries.append(("vllm", None))
    out = []
    for target, prec in tries:
        try:
            q = memory.plan_for(spec, dev, target, p.context, p.concurrency, prec, suggest=target == "cpu")
        except PlanError:
            continue
        fix = next((s for s in q.suggestions if s["fits"]), None)
        label = f"--target {target}" + (f" --quantization {prec}" if prec else "")
        if q.fits or fix:
            out.append(_entry(label, f"{q.runtime}, {q.precision}" + (f", with {fix['change']}" if fix and not
                                                                       q.fits else ""), q if q.fits else None,
                              value=target))
            out[-1]["fits"] = True
    return out
