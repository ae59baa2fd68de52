"""The two servers' command lines, from the sizing: llama-server (GGUF) and vLLM (MXFP4). Each
option is the one the planner planned for: context and slots, GPU offload, parallelism."""

from __future__ import annotations

from .sizing import Sizing

LLAMA_PORT, VLLM_PORT = 8080, 8000
LLAMA_KEY, VLLM_KEY = "LLAMA_API_KEY", "VLLM_API_KEY"  # the env each server reads its --api-key from


def llama_server_args(s: Sizing, model_file: str, served: str, model_dir: str) -> list[str]:
    """llama-server splits --ctx-size over its --parallel slots: each slot gets `context`
    tokens, as planned. Flash attention on and the small SWA cache are llama-server's defaults
    that the --llama-server plan assumes; -ngl 99 puts every layer on the node's GPUs."""
    return ["--model", f"{model_dir}/{model_file}", "--alias", served, "--host", "0.0.0.0",
            "--port", str(LLAMA_PORT), "--ctx-size", str(s.context * s.slots), "--parallel", str(s.slots),
            "--flash-attn", "on", "--n-gpu-layers", "99" if s.gpus else "0"]


def vllm_args(s: Sizing, parallel: bool = True) -> list[str]:
    """vLLM's engine options as planned; `parallel=False` leaves tensor / pipeline sizes to a
    runtime that sets them itself (KServe's multi-node runtime reads them from workerSpec)."""
    opts = s.plan.options
    out = ["--max-model-len", str(s.context), "--max-num-seqs", str(s.slots),
           "--gpu-memory-utilization", str(opts["gpu_memory_utilization"]), "--quantization", "mxfp4"]
    if parallel:
        out += ["--tensor-parallel-size", str(s.tensor)]
        if s.pipeline > 1:
            out += ["--pipeline-parallel-size", str(s.pipeline)]
    return out
