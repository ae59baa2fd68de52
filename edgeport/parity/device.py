"""Parity of what a device actually produced (the kit's run.sh output) against the reference.

Device engines cannot run here, so their kits run the eval set on the device and the output
comes back: TensorRT-LLM's `device_eval.py` writes greedy ids plus, when the engine gathers
context logits, the argmax and next-token log-probability at every prompt position (top-1
regret and perplexity follow); Edge-LLM's `llm_inference` writes response text only, so its
greedy continuations are compared token by token and their tokens judged by the reference
(top-1 regret along the device's own continuation).

Every number is judged against the target profile's `[parity.device.<runtime>]` thresholds.
An output that cannot be judged (truncated, another runtime's, a field missing because the
engine was built without context logits) is a failed report with the reason, never a pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeport.core import manifest as mf
from edgeport.core.errors import TargetError

from .gate import load_evalset
from .metrics import check, finite_or_none, greedy_match, log_softmax, top1_regret

SCHEMA = "edgeport.device-parity/1"
OUTPUT_SCHEMA = "edgeport.device-output/1"  # what the TensorRT-LLM kit's device_eval.py writes


class Unjudgeable(ValueError):
    """The device output lacks what a verdict needs; the message is the one-line reason."""


def compare(artifact: Path, device_output: Path, reference, thresholds: dict | None) -> dict:
    """`reference`: a loaded reference runtime of the artifact's source; `thresholds`: the target
    profile's `[parity.device.<runtime>]` for the artifact (targets.device_thresholds_for: the
    profile is the rule, not the manifest's own copy), None where it has none. Never raises on a
    bad device output: the report fails and `failures` says why."""
    m = mf.load(artifact)
    runtime = m["runtime"]["name"]
    if runtime not in READERS:
        raise TargetError(f"{artifact}: device output comparison is for jetson artifacts, not {runtime}")
    head: dict = {"schema": SCHEMA, "runtime": runtime, "device_output": str(device_output)}
    try:
        if not thresholds:
            raise Unjudgeable(f"target {m['target']} has no [parity.device.{runtime}] thresholds")
        head["thresholds"] = th = thresholds
        report = READERS[runtime](artifact, _read(Path(device_output), runtime), reference)
    except Unjudgeable as e:
        return {**head, "failures": [f"device output not judged: {e}"], "passed": False}
    report = finite_or_none(report)  # strict JSON; check() fails a null figure
    fails = check(report, th)
    return {**head, **report, "failures": fails, "passed": not fails}


def _read(path: Path, runtime: str) -> dict:
    try:
        out = json.loads(path.read_text())
    except OSError as e:
        raise Unjudgeable(f"{path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Unjudgeable(f"{path} is not JSON (truncated copy?): {e}") from None
    if not isinstance(out, dict):
        raise Unjudgeable(f"{path} holds a JSON {type(out).__name__}, not a device output object")
    if out.get("runtime", runtime) != runtime:
        raise Unjudgeable(f"{path} comes from {out['runtime']}, this artifact runs {runtime}")
    if runtime == "tensorrt-llm" and out.get("schema") != OUTPUT_SCHEMA:
        raise Unjudgeable(f"{path} has schema {out.get('schema')!r}, not {OUTPUT_SCHEMA!r} "
                          "(the kit's device_eval.py writes it)")
    return out


def _field(obj: dict, key: str, what: str, hint: str = "") -> object:
    if not isinstance(obj, dict) or key not in obj:
        raise Unjudgeable(f"{what} has no {key!r}{hint}")
    return obj[key]


def _ids(value: object, what: str, vocab: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and 0 <= t < vocab for t in value):
        raise Unjudgeable(f"{what} is not a list of token ids below {vocab}")
    return value


def _floats(value: object, what: str) -> np.ndarray:
    try:
        if isinstance(value, list):
            return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    raise Unjudgeable(f"{what} is not a list of numbers")


def continuation_match(want: list[int], got: list[int], stops: set[int]) -> int:
    """Tokens of the reference's greedy continuation the device reproduced from the start.
    Runtimes stop at an end token (TensorRT-LLM pads with it, Edge-LLM's text just ends); the
    reference here does not. Both are cut at their first stop token, and a device that stopped
    exactly where the reference would have matched the whole continuation."""
    def cut(ids: list[int]) -> list[int]:
        return ids[:next((i for i, t in enumerate(ids) if t in stops), len(ids))]

    w, g = cut(want), cut(got)
    return len(want) if len(w) < len(want) and g == w else greedy_match(w, g)


def path_regret(ref, prompt: list[int], got: list[int], n: int, stops: set[int]) -> np.ndarray:
    """top1_regret along the device's own continuation: at each token it generated, the reference
    probability its choice lost against the reference's argmax after the same prefix. Unlike
    greedy match, one early flip between near-tied tokens costs little and does not zero the
    rest; a device that stopped before n tokens chose an end token there."""
    got = got[:next((i for i, t in enumerate(got) if t in stops), len(got))]
    lp = log_softmax(ref.logits(prompt + got))[len(prompt) - 1:]  # row i follows prompt + got[:i]
    reg = top1_regret(lp[: len(got)], np.asarray(got, dtype=np.int64))
    if len(got) < n and stops:
        p = np.exp(lp[len(got)])
        reg = np.append(reg, max(p.max() - max(p[s] for s in stops), 0.0))
    return reg


def _edgellm(artifact: Path, out: dict, ref) -> dict:
    spec = json.loads((artifact / "input.json").read_text())
    n = spec["max_generate_length"]
    responses = _field(out, "responses", "the device output", " (llm_inference's output list)")
    if not isinstance(responses, list) or len(responses) != len(spec["requests"]):
        count = len(responses) if isinstance(responses, list) else "no list of"
        raise Unjudgeable(f"the device output has {count} responses for {len(spec['requests'])} requests")
    stops = set(ref.info.stop_token_ids)
    per, matches, regret = [], [], []
    for pid, req, resp in zip(spec["edgeport"]["ids"], spec["requests"], responses, strict=True):
        text = _field(resp, "output_text", f"the response to {pid}")
        if not isinstance(text, str):
            raise Unjudgeable(f"the response to {pid} has a non-text output_text")
        prompt = ref.encode(ref.format_prompt(req["messages"]), add_bos=False)
        want, got = ref.greedy(prompt, n), ref.tokenize(text)[:n]
        k = continuation_match(want, got, stops)
        reg = path_regret(ref, prompt, got, n, stops)
        matches.append(k)
        regret.append(reg)
        per.append({"id": pid, "greedy_match": k, "top1_regret": float(reg.mean()) if reg.size else 0.0,
                    "reference": ref.detokenize(want), "device": text})
    reg = np.concatenate(regret)
    return {"greedy_tokens": n, "greedy_match_mean": float(np.mean(matches)),
            "top1_regret": float(reg.mean()) if reg.size else 0.0, "prompts": per}


def _trtllm(artifact: Path, out: dict, ref) -> dict:
    spec = json.loads((artifact / "eval_inputs.json").read_text())
    _, sha = load_evalset()
    if spec["evalset_sha256"] != sha:
        raise Unjudgeable("the kit's eval inputs come from another eval set than this checkout's")
    results = _field(out, "results", "the device output")
    if not isinstance(results, list) or len(results) != len(spec["prompts"]):
        count = len(results) if isinstance(results, list) else "no list of"
        raise Unjudgeable(f"the device output has {count} results for {len(spec['prompts'])} prompts")
    by_id = {r.get("id"): r for r in results if isinstance(r, dict)}
    vocab, n_greedy = spec["vocab_size"], spec["greedy_tokens"]
    stops = set(ref.info.stop_token_ids) | {spec["end_id"]}
    no_logits = " (engine built with GATHER_CONTEXT_LOGITS=0? context top-1 and perplexity need " \
                "--gather_context_logits)"
    top1, regret, nll_ref, nll_dev, matches, per = [], [], [], [], [], []
    for p in spec["prompts"]:
        ids, pid = p["ids"], p["id"]
        r = _field(by_id, pid, "the device output", " result")
        got = _ids(_field(r, "greedy_ids", f"result {pid}"), f"result {pid}: greedy_ids", vocab)
        argmax = _ids(_field(r, "argmax", f"result {pid}", no_logits), f"result {pid}: argmax", vocab)
        lp_dev = _floats(_field(r, "next_logprob", f"result {pid}", no_logits), f"result {pid}: next_logprob")
        if len(argmax) != len(ids) or lp_dev.shape != (len(ids) - 1,):
            raise Unjudgeable(f"result {pid}: {len(argmax)} argmax / {lp_dev.size} next_logprob values for a "
                              f"{len(ids)}-token prompt (want {len(ids)} / {len(ids) - 1})")
        if not (np.isfinite(lp_dev).all() and (lp_dev <= 0).all()):
            raise Unjudgeable(f"result {pid}: next_logprob holds values that are no log-probabilities")
        lr = log_softmax(ref.logits(ids))
        k = continuation_match(ref.greedy(ids, n_greedy), got[:n_greedy], stops)
        agree = np.asarray(argmax) == lr.argmax(-1)
        reg = top1_regret(lr, np.asarray(argmax))
        matches.append(k)
        top1.append(agree)
        regret.append(reg)
        nll_ref.append(-lr[np.arange(len(ids) - 1), ids[1:]])
        nll_dev.append(-lp_dev)
        per.append({"id": pid, "greedy_match": k, "top1": float(agree.mean()), "top1_regret": float(reg.mean())})
    ppl_ref = float(np.exp(np.concatenate(nll_ref).mean()))
    ppl_dev = float(np.exp(np.concatenate(nll_dev).mean()))
    return {"greedy_tokens": n_greedy, "greedy_match_mean": float(np.mean(matches)),
            "top1_regret": float(np.concatenate(regret).mean()), "top1": float(np.concatenate(top1).mean()),
            "ppl_ref": ppl_ref, "ppl_device": ppl_dev, "ppl_delta_pct": 100 * (ppl_dev / ppl_ref - 1),
            "prompts": per}


READERS = {"edgellm": _edgellm, "tensorrt-llm": _trtllm}
