"""The parity gate: run the reference and the artifact's runtimes on the committed eval set
and judge each stage against the target profile's thresholds.

Stages separate what the runtime/format changes from what quantization costs:
  fidelity      reference (transformers, streamed layer by layer) -> unquantized artifact (e.g. GGUF F16 in llama.cpp)
  quantization  unquantized artifact     -> quantized artifact
  end_to_end    reference                -> quantized artifact (reported; judged if thresholds say so)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .metrics import Comparer, check, greedy_match, summarize

EVALSET = Path(__file__).with_name("evalset.json")
SCHEMA = "edgeport.parity/1"

STAGES = {
    "fidelity": ("reference", "unquantized"),
    "quantization": ("unquantized", "quantized"),
    "end_to_end": ("reference", "quantized"),
}


class Scored(Protocol):
    """What the gate asks of a runtime (edgeport.runtimes' Runtime is one): parity sits below the
    runtimes, so it names the calls it makes instead of importing them."""

    name: str
    def encode(self, text: str, add_bos: bool | None = None) -> list[int]: ...
    def logits(self, token_ids: Sequence[int]) -> np.ndarray: ...
    def greedy(self, token_ids: Sequence[int], n: int) -> list[int]: ...
    # optional: prepare(all_ids, greedy=short_ids, greedy_tokens=n), called once before the
    # prompts are scored, for a runtime that computes them all in one pass over its weights;
    # optional: forced_greedy = True, for a runtime whose own greedy decode costs a pass over all
    # its weights per token: the gate then scores the other side's continuation teacher-forced


def load_evalset(path: Path = EVALSET) -> tuple[list[dict], str]:
    raw = path.read_bytes()
    return json.loads(raw)["prompts"], hashlib.sha256(raw).hexdigest()


def run(runtimes: dict[str, Scored], thresholds: dict[str, dict], *, max_tokens: int = 512,
        greedy_tokens: int = 16, sliding_window: int | None = None,
        on_prompt: Callable[[str], None] | None = None, notes: list[str] | None = None) -> dict:
    """`runtimes` maps roles (reference / unquantized / quantized) to loaded runtimes; stages
    whose two roles are both present are measured."""
    prompts, sha = load_evalset()
    seconds = {role: 0.0 for role in runtimes}
    runtimes = {role: _Timed(rt, seconds, role) for role, rt in runtimes.items()}
    ref = runtimes["reference"]
    stages = {s: ab for s, ab in STAGES.items() if ab[0] in runtimes and ab[1] in runtimes}
    comps: dict[str, list] = {s: [] for s in stages}
    greedy: dict[str, list[int]] = {s: [] for s in stages}
    long_lengths = []
    all_ids = [ref.encode(p["text"])[:max_tokens] for p in prompts]
    short = [i for i, p in zip(all_ids, prompts, strict=True) if p["kind"] == "short"]
    forced = {role for role, rt in runtimes.items() if getattr(rt, "forced_greedy", False)}
    conts: dict[tuple[str, tuple[int, ...]], list[int]] = {
        (role, tuple(ids)): rt.greedy(ids, greedy_tokens)
        for role, rt in runtimes.items() if role not in forced for ids in short}
    for role, rt in runtimes.items():  # a runtime that scores best in one pass (the streamed reference)
        if callable(getattr(rt, "prepare", None)):
            extra = ([list(k[1]) + c[:-1] for k, c in conts.items() if c] if role in forced else [])
            rt.prepare(all_ids + extra, greedy=[] if role in forced else short,
                       greedy_tokens=0 if role in forced else greedy_tokens)
    for p, ids in zip(prompts, all_ids, strict=True):
        if p["kind"] == "long":
            long_lengths.append(len(ids))
        if on_prompt:
            on_prompt(p["id"])
        # every runtime's logits a block of positions at a time, each block compared in every
        # stage it belongs to, then dropped: never a whole prompt's [n, vocab] logits per runtime
        acc = {s: Comparer(p["id"], p["kind"], ids) for s in stages}
        streams = {role: _blocks(rt, ids) for role, rt in runtimes.items()}
        for row in zip(*streams.values(), strict=True):
            block = dict(zip(streams, row, strict=True))
            for s, (a, b) in stages.items():
                acc[s].add(block[a], block[b])
            del block, row
        for s, (a, b) in stages.items():
            comps[s].append(acc[s].result())
            if p["kind"] == "short":
                greedy[s].append(_greedy_agreement(runtimes, forced, conts, a, b, ids))
    report_stages = {}
    for s, (a, b) in stages.items():
        summary = summarize(comps[s], greedy[s], greedy_tokens)
        th = thresholds.get(s, {})
        fails = check(summary, th)
        report_stages[s] = {
            "compares": f"{a} ({runtimes[a].name}) -> {b} ({runtimes[b].name})",
            "summary": summary, "thresholds": th, "judged": bool(th), "passed": not fails,
            "failures": fails,
        }
    all_notes = list(notes or [])
    if sliding_window and long_lengths and max(long_lengths) <= sliding_window:
        all_notes.append(f"no eval prompt is longer than the sliding window ({sliding_window})")
    return {
        "schema": SCHEMA, "evalset_sha256": sha, "prompts": len(prompts), "max_tokens": max_tokens,
        "long_prompt_tokens": long_lengths, "sliding_window": sliding_window,
        "stages": report_stages, "passed": all(r["passed"] for r in report_stages.values()),
        "seconds": {role: round(t, 2) for role, t in seconds.items()}, "notes": all_notes,
    }


class _Timed:
    """A runtime whose calls add their wall time to `seconds[role]`: the report says where
    the gate's time went (at gpt-oss-20b's size, most of an export)."""

    def __init__(self, rt: Scored, seconds: dict[str, float], role: str):
        self._rt, self._seconds, self._role = rt, seconds, role

    def __getattr__(self, name: str):
        attr = getattr(self._rt, name)
        if name == "logit_blocks":
            return lambda *a, **kw: self._timed_iter(attr(*a, **kw))
        if name not in ("prepare", "logits", "greedy", "encode"):
            return attr

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self._seconds[self._role] += time.perf_counter() - t
        return timed

    def _timed_iter(self, it: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self._seconds[self._role] += time.perf_counter() - t
            yield item


BLOCK = 128  # positions per block: at a 201k vocabulary, 103 MB of float32 per runtime


def _blocks(rt: Scored, ids: list[int]) -> Iterator[np.ndarray]:
    """The runtime's logits for `ids` in blocks of exactly BLOCK rows (the last one shorter),
    whatever blocks it makes them in: all runtimes' blocks then line up row for row."""
    make = getattr(rt, "logit_blocks", None)
    parts = make(ids, BLOCK) if make is not None else iter([rt.logits(ids)])
    pending: list[np.ndarray] = []
    held = 0
    for part in parts:
        pending.append(part)
        held += len(part)
        while held >= BLOCK:
            whole = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield whole[:BLOCK]
            rest = whole[BLOCK:]
            pending, held = ([rest] if len(rest) else []), len(rest)
    if held:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def _greedy_agreement(runtimes: dict[str, Scored], forced: set[str], conts: dict, a: str, b: str,
                      ids: list[int]) -> int:
    """How many greedy tokens of `a` and `b` agree before they first differ. Where one side is
    `forced`, its greedy tokens are never generated: it scores the other side's continuation
    teacher-forced, and they agree up to the first position where its argmax differs from that
    continuation's token (until then its own greedy context is exactly that continuation)."""
    if a in forced and b in forced:
        raise ValueError(f"both {a} and {b} score teacher-forced: one must generate")
    if a not in forced and b not in forced:
        return greedy_match(conts[(a, tuple(ids))], conts[(b, tuple(ids))])
    scorer, cont = (a, conts[(b, tuple(ids))]) if a in forced else (b, conts[(a, tuple(ids))])
    if not cont:
        return 0
    picks = runtimes[scorer].logits(list(ids) + cont[:-1])[len(ids) - 1:].argmax(-1)
    return greedy_match([int(t) for t in picks], cont)


def drift_line(report: dict, stage: str = "fidelity") -> str | None:
    """Mean KL per position bucket, the place YaRN / sliding-window bugs show."""
    r = report["stages"].get(stage)
    if not r:
        return None
    cells = [f"{k} {kl if kl is not None else float('nan'):.1e}"
             for k, (kl, _) in r["summary"]["kl_top1_by_position"].items()]
    return f"{stage} KL by position: " + ", ".join(cells)


def table(report: dict):
    """A rich Table of the stages, for the terminal."""
    from rich.table import Table

    t = Table(title=f"parity ({report['prompts']} prompts, long ones {report['long_prompt_tokens']} tokens)")
    cols = ("stage", "reference -> candidate", "mean KL", "p99 KL", "top-1 regret (raw top-1)", "PPL ref -> cand",
            "greedy", "result")
    if secs := report.get("seconds"):
        t.caption = "seconds: " + ", ".join(f"{role} {v:.0f}" for role, v in secs.items())
    for col in cols:
        t.add_column(col)
    for name, r in report["stages"].items():
        s = {k: (float("nan") if v is None else v) for k, v in r["summary"].items()}  # null: not finite
        res = ("[green]pass[/green]" if r["passed"] else "[red]FAIL[/red]") if r["judged"] else "reported"
        greedy = f"{s.get('greedy_match_mean', 0):.1f}/{s.get('greedy_tokens', 0)}"
        t.add_row(name, " -> ".join(STAGES[name]), f"{s['mean_kl']:.2e}", f"{s['p99_kl']:.2e}",
                  f"{s['top1_regret']:.1e} ({s['top1']:.3f})",
                  f"{s['ppl_ref']:.2f} -> {s['ppl']:.2f} ({s['ppl_delta_pct']:+.1f}%)", greedy, res)
    return t
