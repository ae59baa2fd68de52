"""Parity of what a device actually produced (the kit's run.sh output) against the reference.

Device engines cannot run here, so their kits run the eval set on the device and the output
comes back: TensorRT-LLM's `device_eval.py` writes greedy ids plus, when the engine gathers
context logits, the argmax and next-token log-probability at every prompt position (top-1
agreement and perplexity follow); Edge-LLM's `llm_inference` writes response text only, so
its greedy continuations are compared token by token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .gate import load_evalset
from .metrics import greedy_match, log_softmax

SCHEMA = "edgeport.device-parity/1"


def compare(artifact: Path, device_output: Path, reference) -> dict:
    """`reference`: a loaded reference runtime of the artifact's source."""
    from export import manifest as mf

    m = mf.load(artifact)
    out = json.loads(Path(device_output).read_text())
    runtime = m["runtime"]["name"]
    if runtime == "edgellm":
        report = _edgellm(artifact, out, reference)
    elif runtime == "tensorrt-llm":
        report = _trtllm(artifact, out, reference)
    else:
        raise ValueError(f"{artifact}: device output comparison is for jetson artifacts, not {runtime}")
    th = m.get("parity", {}) or {}
    e2e = (th.get("stages", {}).get("end_to_end") or {}).get("thresholds", {})
    fails = []
    if "top1" in report and "top1_min" in e2e and report["top1"] < e2e["top1_min"]:
        fails.append(f"top1 = {report['top1']:.4g} < {e2e['top1_min']:g}")
    report.update({"schema": SCHEMA, "runtime": runtime, "device_output": str(device_output),
                   "failures": fails, "passed": not fails})
    return report


def _edgellm(artifact: Path, out: dict, ref) -> dict:
    spec = json.loads((artifact / "input.json").read_text())
    n = spec["max_generate_length"]
    responses = out["responses"]
    if len(responses) != len(spec["requests"]):
        raise ValueError(f"device output has {len(responses)} responses for {len(spec['requests'])} requests")
    per, matches = [], []
    for pid, req, resp in zip(spec["edgeport"]["ids"], spec["requests"], responses, strict=True):
        ids = ref.encode(ref.format_prompt(req["messages"]), add_bos=False)
        want = ref.greedy(ids, n)
        got = ref.tokenize(resp["output_text"])[:n]
        k = greedy_match(want, got)
        matches.append(k)
        per.append({"id": pid, "greedy_match": k, "reference": ref.detokenize(want), "device": resp["output_text"]})
    return {"greedy_tokens": n, "greedy_match_mean": float(np.mean(matches)), "prompts": per}


def _trtllm(artifact: Path, out: dict, ref) -> dict:
    spec = json.loads((artifact / "eval_inputs.json").read_text())
    _, sha = load_evalset()
    if spec["evalset_sha256"] != sha:
        raise ValueError("the kit's eval inputs come from another eval set than this checkout's")
    results = {r["id"]: r for r in out["results"]}
    top1, nll_ref, nll_dev, matches, per = [], [], [], [], []
    for p in spec["prompts"]:
        r = results.get(p["id"])
        if r is None:
            raise ValueError(f"device output has no result for prompt {p['id']}")
        ids = p["ids"]
        lg = ref.logits(ids)
        k = greedy_match(ref.greedy(ids, spec["greedy_tokens"]), r["greedy_ids"])
        matches.append(k)
        entry = {"id": p["id"], "greedy_match": k}
        if "argmax" in r:
            agree = np.asarray(r["argmax"][: len(ids)]) == lg.argmax(-1)
            top1.append(agree)
            lr = log_softmax(lg)
            nll_ref.append(-lr[np.arange(len(ids) - 1), ids[1:]])
            nll_dev.append(-np.asarray(r["next_logprob"]))
            entry["top1"] = float(agree.mean())
        per.append(entry)
    rep = {"greedy_tokens": spec["greedy_tokens"], "greedy_match_mean": float(np.mean(matches)), "prompts": per}
    if top1:
        rep["top1"] = float(np.concatenate(top1).mean())
        rep["ppl_ref"] = float(np.exp(np.concatenate(nll_ref).mean()))
        rep["ppl_device"] = float(np.exp(np.concatenate(nll_dev).mean()))
        rep["ppl_delta_pct"] = 100 * (rep["ppl_device"] / rep["ppl_ref"] - 1)
    return rep
