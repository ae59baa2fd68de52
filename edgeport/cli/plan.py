"""`edgeport plan`: will a model fit a device, from its config alone."""

from __future__ import annotations

import json

from invoke import task

from .common import cli, number, plan_model


@task(help={
    "device": "a device profile in edgeport/planning/devices.toml, e.g. rtx-4090, apple-m-32gb, orin-agx-64gb, "
              "8x-h100-80gb",
    "model": ("model directory (config.json, tokenizer.json), a config.json, a bundled checkpoint (tiny-gpt-oss, "
              "tiny-llama) or a shipped config: gpt-oss-20b, gpt-oss-120b (a local path of that name wins)"),
    "target": "cpu | apple | vllm | onnx | jetson (default: the device's recommended target)",
    "context": "tokens per sequence (default: the target's n_ctx / max_model_len)",
    "concurrency": "sequences held at once (each with --context tokens of KV cache)",
    "quantization": "the target's precision, e.g. Q4_K_M, Q8_0 (gguf); int8, int4 (onnx, jetson)",
    "llama_server": "GGUF: plan for llama-server/llama-cli defaults (flash attention, small SWA cache) instead of "
                    "edgeport's llama-cpp-python runtime",
    "json_": "print the plan as JSON (fields: README, Planning memory)",
    "cluster": "vLLM on Kubernetes nodes of this profile: the tensor-parallel size over a node's GPUs and the "
               "pipeline-parallel size over nodes that make the model fit, with the reason",
})
@cli
def plan(c, device, model, target=None, context=None, concurrency=1, quantization=None, llama_server=False,
         json_=False, cluster=False):
    """Will the model fit the device? Weights, KV cache and runtime buffers from config.json alone, and what to
    change when it does not fit (context, --n-cpu-moe, n_gpu_layers, tensor parallelism, target)."""
    from edgeport.planning.memory import plan as make_plan
    from edgeport.planning.report import render

    context = None if context is None else number("context", context, least=1)
    concurrency = number("concurrency", concurrency, least=1)
    if cluster:
        from edgeport.planning.parallel import layout

        lay = layout(plan_model(model), device, context=context, concurrency=concurrency)
        if json_:
            print(json.dumps({**lay.to_json(), "plan": lay.plan.to_json()}, indent=2))
        else:
            print(f"vLLM on {device}: --tensor-parallel-size {lay.tensor} --pipeline-parallel-size {lay.pipeline} "
                  f"({lay.nodes} node(s), {lay.gpus} GPU(s))\n{lay.reason}")
        return
    p = make_plan(plan_model(model), device, target=target, context=context, concurrency=concurrency,
                  quantization=quantization, llama_server=llama_server)
    if json_:
        print(json.dumps(p.to_json(), indent=2))
    else:
        render(p)
