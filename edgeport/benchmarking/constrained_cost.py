"""What constrained decoding costs: decode speed of the same server with and without a JSON schema.

`python -m edgeport.benchmarking.constrained_cost --artifact DIR [--runs 6] [--tokens 256]` starts our
front (`python -m edgeport.serving`) over the artifact's engine (llama-server for GGUF, the in-process
runtime for ONNX), then alternates two chat requests, `--runs` times each after one warm-up:
- free: no constraint;
- constrained: `response_format` a strict schema for an array of integers.
Both ban (logit_bias, the same list) the model's end tokens and every token holding `]`, so the array
never closes and both write `--tokens` tokens (the tiny models close it after a few tokens otherwise).
`minItems: 64` would lengthen the answer too, but llama.cpp expands it into nested rules and then decoded
at 1.5–35 tokens/s here: a cost of that keyword, not of constraining as such.
The figure: completion tokens over the request's wall time, median over the runs; the goal is
constrained ≥ 0.90 × free. For gpt-oss the constrained request also holds the free analysis (at
reasoning effort low, to keep it short) and the second phase's prompt, which both engines continue
from the first phase's KV cache (llama-server's prompt cache; the ONNX runtime's keep_prefix).
One request at a time; `--parallel 1`. (Timing streamed chunks instead does not work at these speeds:
the front's events arrive in bursts, hundreds per read.)

`--in-process` (ONNX artifacts) times the runtime's own loop instead, no server: `stream_ids` with and
without the llguidance mask, `--tokens` each (the same tokens banned), the mask's cost alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgeport import runtimes
from edgeport.core import manifest as mf
from edgeport.runtimes.base import GenerationResult
from edgeport.serving.engines import free_port
from edgeport.serving.guidance import Guide

from .bench_serve import _started

SCHEMA = {"type": "array", "items": {"type": "integer"}}
PROMPT = "List some numbers."


def _closing_ids(artifact: Path, m: dict) -> list[int]:
    """Every vocabulary token whose text holds `]` (ASCII stays itself in both GGUF and tokenizer.json
    vocabularies)."""
    rt = m["runtime"]
    if rt["name"] == "llama.cpp":
        import gguf

        field = gguf.GGUFReader(artifact / rt["model_file"]).fields["tokenizer.ggml.tokens"]
        vocab = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        return [i for i, t in enumerate(vocab) if "]" in t]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(next(iter(sorted(artifact.rglob("tokenizer.json"))))))
    return sorted(i for t, i in tok.get_vocab(with_added_tokens=True).items() if "]" in t)


def _once(client, model: str, tokens: int, constrained: bool, banned: list[int]) -> dict:
    body: dict = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
                  "temperature": 0, "reasoning_effort": "low", "logit_bias": {str(t): -100 for t in banned}}
    if constrained:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "numbers", "schema": SCHEMA, "strict": True}}
    t = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    wall = time.perf_counter() - t
    r.raise_for_status()
    n = r.json()["usage"]["completion_tokens"]
    content = r.json()["choices"][0]["message"]["content"] or ""
    # the constraint held: what was written is the start of an array of integers
    if constrained and not (content.startswith("[") and set(content) <= set("[]0123456789-, \n\t")):
        raise SystemExit(f"the constrained answer is not an array of integers: {content[:200]!r}")
    return {"tokens": n, "seconds": round(wall, 4), "tok_s": round(n / wall, 1)}


def measure_in_process(artifact: Path, runs: int, tokens: int) -> dict:
    """The ONNX runtime's sampling loop with and without the mask (the same prompt, greedy)."""

    rt = runtimes.load(artifact, n_ctx=tokens + 64)
    guide = Guide(rt.tok.to_str(), rt.tok.get_vocab_size(with_added_tokens=True), rt.info.stop_token_ids)
    ids = rt.encode(PROMPT, add_bos=None)
    banned = {t: -100.0 for t in {*rt.info.stop_token_ids, *_closing_ids(artifact, mf.load(artifact))}}

    def once(constrained: bool) -> float:
        kw = {"constraint": guide.mask(SCHEMA, None)} if constrained else {}
        result = GenerationResult()
        t = time.perf_counter()
        for _ in rt.stream_ids(ids, tokens, 0.0, 1.0, 0, (), result=result, logit_bias=banned, **kw):
            pass
        return round(result.completion_tokens / (time.perf_counter() - t), 1)

    out: dict = {"artifact": str(artifact), "runtime": f"{rt.name} (in-process)", "runs": runs, "tokens": tokens}
    once(False), once(True)  # warm-up
    pairs = [(once(False), once(True)) for _ in range(runs)]
    for key, i in (("free", 0), ("constrained", 1)):
        out[key] = [p[i] for p in pairs]
        out[f"{key}_tok_s"] = statistics.median(out[key])
    out["ratio"] = round(out["constrained_tok_s"] / out["free_tok_s"], 3)
    return out


def measure(artifact: Path, runs: int, tokens: int, threads: int | None = None) -> dict:
    import httpx


    m = mf.load(artifact)
    banned = sorted({*m["model"]["stop_token_ids"], *_closing_ids(artifact, m)})
    port = free_port()
    cmd = [sys.executable, "-m", "edgeport.serving", "--artifact", str(artifact), "--port", str(port),
           "--parallel", "1", "--ctx", str(max(1024, tokens * 2 + 256))]
    cmd += ["--threads", str(threads)] if threads else []
    out: dict = {"artifact": str(artifact), "runtime": m["runtime"]["name"], "runs": runs, "tokens": tokens,
                 "free": [], "constrained": []}
    with tempfile.TemporaryDirectory() as d, _started(cmd, "/health", port, Path(d) / "front.log") as url, \
            httpx.Client(base_url=url, timeout=600, trust_env=False) as c:
        model = c.get("/v1/models").json()["data"][0]["id"]
        for constrained in (False, True):  # warm-up: the engine's first run, the guide's tokenizer
            _once(c, model, tokens, constrained, banned)
        for _ in range(runs):
            for key, constrained in (("free", False), ("constrained", True)):
                out[key].append(_once(c, model, tokens, constrained, banned))
    for key in ("free", "constrained"):
        out[f"{key}_tok_s"] = statistics.median(x["tok_s"] for x in out[key])
    out["ratio"] = round(out["constrained_tok_s"] / out["free_tok_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", action="append", required=True, type=Path, help="artifact directory (repeat)")
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--in-process", action="store_true", help="ONNX: time the runtime's loop, no server")
    ap.add_argument("--threads", type=int, help="llama-server's threads (serve --threads); 1 on a shared machine")
    a = ap.parse_args()
    results = [measure_in_process(p, a.runs, a.tokens) if a.in_process else measure(p, a.runs, a.tokens, a.threads)
               for p in a.artifact]
    print(f"{'artifact':<40} {'runtime':<25} {'free tok/s':>10} {'constrained':>11} {'ratio':>6}")
    for r in results:
        print(f"{r['artifact'][-40:]:<40} {r['runtime']:<25} {r['free_tok_s']:>10.1f} {r['constrained_tok_s']:>11.1f} "
              f"{r['ratio']:>6.3f}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
