"""Per-pod sizing from the planner: one function per engine, each returning what the manifests
need and the plan it came from, so a test can hold the manifests to the planner's numbers.

Memory: the container's request is what the plan places for the pod (weights + KV cache + runtime
buffers, over the pod's GPUs and host memory: a GPU pod reads its weights through host memory and
keeps its CUDA contexts there); the limit adds the planner's headroom (usable - need of the
binding pool), so a pod may grow as far as the device profile allows and no further."""

from __future__ import annotations

from dataclasses import dataclass

from edgeport.planning import memory, parallel
from edgeport.planning.devices import Device
from edgeport.planning.memory import Plan
from edgeport.planning.model import ModelSpec

from . import DeployError

MIB = 2**20


@dataclass(frozen=True)
class Sizing:
    engine: str  # "llama-server" or "vllm"
    device: str
    context: int  # tokens per sequence
    slots: int  # sequences at once per pod (llama-server --parallel, vLLM --max-num-seqs)
    gpus: int  # GPUs per pod
    tensor: int  # --tensor-parallel-size
    pipeline: int  # --pipeline-parallel-size: pods (nodes) per replica
    memory_request: int  # bytes per pod
    memory_limit: int
    reason: str
    plan: Plan

    @property
    def multi_node(self) -> bool:
        return self.pipeline > 1

    def to_json(self) -> dict:
        return {"engine": self.engine, "device": self.device, "context": self.context, "slots": self.slots,
                "gpus_per_pod": self.gpus, "tensor_parallel_size": self.tensor,
                "pipeline_parallel_size": self.pipeline, "memory_request_bytes": self.memory_request,
                "memory_limit_bytes": self.memory_limit, "reason": self.reason, "plan": self.plan.to_json()}


def mib(n: int) -> str:
    """A Kubernetes memory quantity, rounded up to whole MiB."""
    return f"{-(-n // MIB)}Mi"


def llama_server(spec: ModelSpec, dev: Device, target: str, quantization: str | None, context: int | None,
                 slots: int) -> Sizing:
    """llama-server as the planner's --llama-server plan has it: every layer on the GPUs
    (-ngl 99) of a GPU node, or on the CPU; --parallel slots of `context` tokens each."""
    p = memory.plan_for(spec, dev, target, context, slots, quantization, llama_server=True)
    if not p.fits:
        raise DeployError(f"{spec.name} on {dev.name}: {p.verdict()}")
    need = sum(pool.need for pool in p.pools.values())
    gpus = dev.gpus if dev.memory == "discrete" else 0
    return Sizing("llama-server", dev.name, p.context, slots, gpus, 1, 1, need, need + p.headroom, p.verdict(), p)


def vllm(spec: ModelSpec, dev: Device, context: int | None, slots: int) -> Sizing:
    """vLLM with the cluster layout of planning/parallel.py: `tensor` GPUs per pod, `pipeline`
    pods per replica; memory per pod is the per-GPU plan times the pod's GPUs."""
    lay = parallel.layout_for(spec, dev, context, slots)
    gpu = lay.plan.pools["gpu"]
    return Sizing("vllm", dev.name, lay.plan.context, slots, lay.tensor, lay.tensor, lay.pipeline,
                  gpu.need * lay.tensor, gpu.usable * lay.tensor, lay.reason, lay.plan)
