"""The on-device half of a Jetson artifact: engine limits sized for the device and model, the
engine build script, the run script and the eval requests whose outputs come back for
`edgeport parity --device-output`.

Engines are never built here: they are specific to the Orin, its JetPack and TensorRT.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from edgeport.core.errors import TargetError

GIB = 2**30


def kv_bytes_per_token(cfg: dict, dtype_bytes: int = 2) -> int:
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim * dtype_bytes


def size_limits(device_name: str, device: dict, cfg: dict, weight_bytes: int) -> dict:
    """Batch, input length and KV-cache capacity that fit the device: the usable share of its
    (CPU+GPU shared) memory minus the weights, in FP16 KV-cache tokens, capped by the profile."""
    budget = device["memory_gib"] * GIB * device["usable_fraction"] - weight_bytes
    per_token = kv_bytes_per_token(cfg)
    fits = int(budget // per_token) if budget > 0 else 0
    kv = min(device["max_kv_tokens"], fits, cfg.get("max_position_embeddings", 1 << 30) * device["max_batch_size"])
    if kv < 256:
        raise TargetError(f"{device_name}: {weight_bytes / GIB:.1f} GiB of weights leave room for only {fits} "
                          f"KV-cache tokens in {device['memory_gib']} GiB x {device['usable_fraction']}; "
                          "pick a bigger device or a smaller precision (--precision int4)")
    max_input = min(device["max_input_len"], kv, cfg.get("max_position_embeddings", 1 << 30))
    return {"max_batch_size": device["max_batch_size"], "max_input_len": max_input,
            "max_kv_cache_capacity": kv, "kv_bytes_per_token": per_token,
            "weights_gib": round(weight_bytes / GIB, 3), "memory_gib": device["memory_gib"]}


def _script(path: Path, body: str) -> None:
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def write_edgellm_kit(out: Path, limits: dict, device: str, precision: str, requests: list[dict]) -> list[str]:
    """build_engine.sh (llm_build), run.sh (llm_inference) and input.json with the eval requests."""
    _script(out / "build_engine.sh", f"""#!/usr/bin/env bash
# Build the TensorRT Edge-LLM engine ON THE JETSON (JetPack 7.2): engines are specific to the
# device, JetPack and TensorRT version. Needs Edge-LLM's C++ tools (llm_build, llm_inference),
# built from https://github.com/NVIDIA/TensorRT-Edge-LLM for this JetPack; put them on PATH or
# set EDGELLM_BIN. Limits sized by edgeport for {device} ({precision}); override with env vars.
set -euo pipefail
cd "$(dirname "$0")"
BIN="${{EDGELLM_BIN:-}}"
LLM_BUILD="${{BIN:+$BIN/}}llm_build"
command -v "$LLM_BUILD" >/dev/null || {{
  echo "llm_build not found: build TensorRT Edge-LLM's C++ runtime on this Jetson first" >&2; exit 2; }}
"$LLM_BUILD" --onnxDir ./llm --engineDir ./engine \\
  --maxBatchSize "${{MAX_BATCH_SIZE:-{limits['max_batch_size']}}}" \\
  --maxInputLen "${{MAX_INPUT_LEN:-{limits['max_input_len']}}}" \\
  --maxKVCacheCapacity "${{MAX_KV_CACHE_CAPACITY:-{limits['max_kv_cache_capacity']}}}"
echo "engine written to $(pwd)/engine"
""")
    _script(out / "run.sh", """#!/usr/bin/env bash
# Run the eval requests (input.json: the parity eval set's short prompts, greedy) on the
# Jetson; bring device_output.json back and run
#   edgeport parity --artifact <this dir> --device-output device_output.json
# to compare it with the reference. Other requests: ./run.sh my_input.json my_output.json
set -euo pipefail
cd "$(dirname "$0")"
BIN="${EDGELLM_BIN:-}"
"${BIN:+$BIN/}llm_inference" --engineDir ./engine --inputFile "${1:-input.json}" --outputFile "${2:-device_output.json}"
""")
    (out / "input.json").write_text(json.dumps({
        "batch_size": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 1,  # top_k 1: greedy
        "max_generate_length": requests[0]["max_new_tokens"] if requests else 16,
        "requests": [{"messages": r["messages"]} for r in requests],
        "edgeport": {"ids": [r["id"] for r in requests], "note": "request i answers eval prompt ids[i]"},
    }, indent=2) + "\n")
    return ["build_engine.sh", "run.sh", "input.json"]


DEVICE_EVAL = '''"""Run edgeport's eval prompts through the TensorRT-LLM engine on the Jetson and write
device_output.json for `edgeport parity --device-output` (greedy ids; context argmax and the
log-probability of each next prompt token when the engine was built with
--gather_context_logits)."""
import json
import sys

import torch
from tensorrt_llm.runtime import ModelRunner

engine, inputs, out = sys.argv[1], sys.argv[2], sys.argv[3]
spec = json.load(open(inputs))
runner = ModelRunner.from_dir(engine_dir=engine, rank=0)
results = []
for p in spec["prompts"]:
    ids = torch.tensor(p["ids"], dtype=torch.int32)
    res = runner.generate([ids], max_new_tokens=spec["greedy_tokens"], end_id=spec["end_id"],
                          pad_id=spec["pad_id"], top_k=1, return_dict=True)
    n = len(p["ids"])
    # output_ids: [batch, beams, input + new], the prompt first (padding after an end_id stop)
    entry = {"id": p["id"], "greedy_ids": res["output_ids"][0][0][n:n + spec["greedy_tokens"]].tolist()}
    # context_logits (only with --gather_context_logits): one [input, padded vocab] tensor per request
    if res.get("context_logits") is not None:
        lg = res["context_logits"][0].float()[:, : spec["vocab_size"]]
        lp = torch.log_softmax(lg, dim=-1)
        entry["argmax"] = lg.argmax(-1).tolist()
        entry["next_logprob"] = lp[torch.arange(n - 1), ids[1:].long()].tolist()
    results.append(entry)
json.dump({"schema": "edgeport.device-output/1", "runtime": "tensorrt-llm", "results": results}, open(out, "w"))
print(f"wrote {out}")
'''


def write_trtllm_kit(out: Path, limits: dict, device: str, eval_inputs: dict) -> list[str]:
    _script(out / "build_engine.sh", f"""#!/usr/bin/env bash
# Build the TensorRT-LLM engine ON THE JETSON (JetPack 6.1, TensorRT-LLM v0.12.0-jetson: see its
# README4Jetson.md; build the wheel with --cuda_architectures 87). trtllm-build quantizes the
# FP16 weights to INT8 weight-only (W8A16) while loading the checkpoint, in TensorRT-LLM's own
# GPU-specific layout. Limits sized by edgeport for {device}; override with env vars.
# --gather_context_logits lets run.sh return context logits for parity (costs memory; set
# GATHER_CONTEXT_LOGITS=0 for a deployment engine).
set -euo pipefail
cd "$(dirname "$0")"
python3 -c "import tensorrt_llm" 2>/dev/null || {{
  echo "tensorrt_llm is not importable: install TensorRT-LLM v0.12.0-jetson on this Jetson first" >&2; exit 2; }}
EXTRA=()
[ "${{GATHER_CONTEXT_LOGITS:-1}}" = "1" ] && EXTRA+=(--gather_context_logits)
trtllm-build --checkpoint_dir ./trtllm_checkpoint --output_dir ./engine \\
  --gemm_plugin float16 --gpt_attention_plugin float16 \\
  --max_batch_size "${{MAX_BATCH_SIZE:-{limits['max_batch_size']}}}" \\
  --max_input_len "${{MAX_INPUT_LEN:-{limits['max_input_len']}}}" \\
  --max_seq_len "${{MAX_SEQ_LEN:-{limits['max_kv_cache_capacity']}}}" \\
  --max_num_tokens "${{MAX_NUM_TOKENS:-{limits['max_input_len']}}}" "${{EXTRA[@]}}"
echo "engine written to $(pwd)/engine"
""")
    _script(out / "run.sh", """#!/usr/bin/env bash
# Run edgeport's eval prompts on the Jetson; bring device_output.json back and run
#   edgeport parity --artifact <this dir> --device-output device_output.json
set -euo pipefail
cd "$(dirname "$0")"
python3 device_eval.py ./engine eval_inputs.json "${1:-device_output.json}"
""")
    _script(out / "serve.sh", """#!/usr/bin/env bash
# Serve the engine to applications: edgeport's OpenAI-compatible front (python -m edgeport.serving) over
# TensorRT-LLM in-process, one generation at a time, up to QUEUE more waiting (beyond that:
# 503 with Retry-After). Needs ./build_engine.sh run first and edgeport installed on this
# Jetson (pip install <edgeport checkout>). v0.12's Python runner keeps no KV cache between
# calls, so each streamed token re-runs the prefix: fine for short answers, slow for long ones.
#   HOST=0.0.0.0 PORT=8000 QUEUE=16 API_KEY_ENV=MY_KEY_VAR ./serve.sh
set -euo pipefail
cd "$(dirname "$0")"
[ -d engine ] || { echo "no engine here: run ./build_engine.sh first" >&2; exit 2; }
python3 -c "import serving" 2>/dev/null || {
  echo "edgeport's serving front is not installed: pip install <edgeport checkout> on this Jetson" >&2; exit 2; }
ARGS=(--artifact . --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --queue "${QUEUE:-16}")
[ -n "${API_KEY_ENV:-}" ] && ARGS+=(--api-key-env "$API_KEY_ENV")
exec python3 -m edgeport.serving "${ARGS[@]}" "$@"
""")
    (out / "device_eval.py").write_text(DEVICE_EVAL)
    (out / "eval_inputs.json").write_text(json.dumps(eval_inputs) + "\n")
    return ["build_engine.sh", "run.sh", "serve.sh", "device_eval.py", "eval_inputs.json"]
