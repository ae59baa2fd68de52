"""The vLLM layout of a model on a cluster of one node profile: tensor parallel over a node's
GPUs while one node suffices, then pipeline parallel over as many such nodes as it takes (the
split vLLM's distributed-serving guide recommends: TP inside a node, PP across nodes). Each
candidate is sized by memory._vllm, the same per-GPU plan `edgeport plan` makes, so the layout
and the plan never disagree."""

from __future__ import annotations

from dataclasses import dataclass

from edgeport import targets

from . import PlanError, devices, memory, model
from .devices import GIB, Device
from .memory import Plan
from .model import ModelSpec

MAX_NODES = 16


@dataclass(frozen=True)
class Layout:
    tensor: int  # GPUs per node the model is split over (--tensor-parallel-size)
    pipeline: int  # nodes, one pipeline stage each (--pipeline-parallel-size)
    plan: Plan  # the per-GPU plan of this layout
    reason: str

    @property
    def nodes(self) -> int:
        return self.pipeline

    @property
    def gpus(self) -> int:
        return self.tensor * self.pipeline

    def to_json(self) -> dict:
        return {"tensor_parallel_size": self.tensor, "pipeline_parallel_size": self.pipeline,
                "nodes": self.nodes, "gpus_per_node": self.tensor, "reason": self.reason,
                "per_gpu_need_bytes": self.plan.pools["gpu"].need,
                "per_gpu_usable_bytes": self.plan.pools["gpu"].usable}


def tp_sizes(spec: ModelSpec, gpus: int) -> list[int]:
    """Tensor-parallel sizes vLLM accepts on `gpus` GPUs: powers of two dividing the attention
    and KV heads (vLLM asserts both divide evenly)."""
    heads = spec.config.get("num_attention_heads", 1)
    kv_heads = spec.config.get("num_key_value_heads", heads)
    out, tp = [], 1
    while tp <= gpus:
        if heads % tp == 0 and kv_heads % tp == 0:
            out.append(tp)
        tp *= 2
    return out


def layout(model_path: str, device: str, context: int | None = None, concurrency: int = 1) -> Layout:
    return layout_for(model.load(model_path), devices.load(device), context, concurrency)


def layout_for(spec: ModelSpec, dev: Device, context: int | None = None, concurrency: int = 1,
               max_nodes: int = MAX_NODES) -> Layout:
    if dev.memory != "discrete":
        raise PlanError(f"a vLLM cluster layout needs discrete-GPU nodes; {dev.name} is {dev.memory} memory")
    profile = targets.load("vllm")
    ctx = context or profile.runtime_options.get("max_model_len") or memory.DEFAULT_CONTEXT

    def sized(tp: int, pp: int) -> Plan:
        return memory._vllm(spec, dev, profile, profile.quantization, ctx, concurrency, False, tp=tp, pp=pp)

    sizes = tp_sizes(spec, dev.gpus)
    one = sized(1, 1)
    if one.fits:
        return Layout(1, 1, one, f"fits one GPU: {_gib(one)} of {_usable(one)} GiB usable")
    for tp in sizes[1:]:
        q = sized(tp, 1)
        if q.fits:
            return Layout(tp, 1, q, f"one {dev.name} GPU offers {_usable(one)} GiB, the model needs {_gib(one)}; "
                                    f"tensor parallel {tp} over {tp} of the node's {dev.gpus} GPUs puts {_gib(q)} "
                                    "GiB on each")
    tp = sizes[-1]
    node = sized(tp, 1)
    for pp in range(2, min(max_nodes, spec.n_layers) + 1):
        q = sized(tp, pp)
        if q.fits:
            return Layout(tp, pp, q, f"one {dev.name} node is not enough: tensor parallel {tp} over its "
                                     f"{dev.gpus} GPU(s) needs {_gib(node)} GiB per GPU, {_usable(node)} usable; "
                                     f"pipeline parallel over {pp} such nodes (one stage of at most "
                                     f"{max(memory.pp_stages(spec.n_layers, pp))} of {spec.n_layers} layers each, "
                                     f"tensor parallel {tp} inside) needs {_gib(q)} GiB per GPU")
    raise PlanError(f"{spec.name} does not fit {max_nodes} {dev.name} nodes with vLLM "
                    f"(tensor parallel {tp}, pipeline parallel up to {max_nodes})")


def _gib(p: Plan) -> str:
    return f"{p.pools['gpu'].need / GIB:.1f}"


def _usable(p: Plan) -> str:
    return f"{p.pools['gpu'].usable / GIB:.1f}"
