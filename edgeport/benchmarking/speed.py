"""Speed of one artifact through edgeport's runtime interface: time to first token, prefill and
decode tokens/s at several prompt lengths (short, and past the sliding window), after a warmup,
over repetitions (median and min–max), with the thread count stated. Greedy decoding of a fixed
number of tokens (stop tokens do not end it) so every run does the same work."""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Workload:
    name: str
    prompt_tokens: int
    new_tokens: int


def workloads(sliding_window: int | None, new_tokens: int = 32) -> list[Workload]:
    """A short prompt, and one several windows long (512 tokens at least)."""
    long = max(512, 4 * (sliding_window or 0))
    return [Workload("short", 32, new_tokens), Workload("long", long, new_tokens)]


def prompt_ids(rt, n: int) -> list[int]:
    """The first n tokens of the parity eval set's text (real text, not repeated tokens)."""
    ev = json.loads((ROOT / "parity" / "evalset.json").read_text())
    ids = rt.encode("\n".join(p["text"] for p in ev["prompts"]))
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def _once(rt, ids: list[int], new_tokens: int) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    # sized by this request, as serving sizes it (a runtime that allocates its KV cache up front,
    # onnxruntime-genai, would otherwise make the first token pay for the model's whole context)
    dec = rt._decode(list(ids), new_tokens)
    logits = next(dec)
    tok = int(np.argmax(logits))
    t1 = time.perf_counter()  # prompt processed, first token chosen
    for _ in range(new_tokens - 1):
        logits = dec.send(tok)
        tok = int(np.argmax(logits))
    t2 = time.perf_counter()
    dec.close()
    return {"ttft_s": t1 - t0, "prefill_tps": len(ids) / (t1 - t0),
            "decode_tps": (new_tokens - 1) / (t2 - t1) if new_tokens > 1 else None}


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(rt, work: Workload, reps: int = 3, warmup: int = 1) -> dict:
    ids = prompt_ids(rt, work.prompt_tokens)
    for _ in range(warmup):
        _once(rt, ids, work.new_tokens)
    runs = [_once(rt, ids, work.new_tokens) for _ in range(reps)]
    return {**asdict(work), **{k: summarize([r[k] for r in runs]) for k in runs[0] if runs[0][k] is not None}}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def threads() -> int:
    """What llama.cpp and onnxruntime use by default here: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0))
