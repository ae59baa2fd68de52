"""Parity metrics, the one implementation every target uses.

All comparisons are on full next-token distributions at every position of the same token
ids: KL(reference || candidate), top-1 agreement, perplexity of each on the prompt's own
next tokens, and greedy continuation match length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POSITION_BUCKET = 64
# A reference whose two best logits are closer than this has no top-1 that survives F16
# arithmetic: llama.cpp's F16 activations move the tiny gpt-oss's logits by 1.7e-3 (median),
# 8.4e-3 (p99), 0.043 (max) against fp32 transformers with identical weights. Such positions
# are counted (`near_ties`) and `top1_decisive` leaves them out; `top1` keeps them all.
TIE_MARGIN = 1e-2


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@dataclass
class PromptComparison:
    """Per-position numbers for one prompt (row i predicts token i+1)."""

    prompt_id: str
    kind: str
    kl: np.ndarray  # [n]
    top1: np.ndarray  # [n] bool
    nll_ref: np.ndarray  # [n-1]
    nll_cand: np.ndarray  # [n-1]
    near_tie: np.ndarray  # [n] bool: reference top-2 logit gap < TIE_MARGIN
    regret: np.ndarray  # [n]: p_ref(reference's top-1) - p_ref(candidate's top-1), see top1_regret
    # positions whose logits hold a NaN or an infinity, per side: a broken kernel or an
    # overflowing scale, exactly what the gate exists for (NaN compares false with any limit)
    nonfinite_ref: np.ndarray  # [k] int
    nonfinite_cand: np.ndarray  # [k] int


def top1_regret(ref_logprobs: np.ndarray, cand_top1: np.ndarray) -> np.ndarray:
    """Per position, the reference probability lost by taking the candidate's top-1 instead of
    the reference's own: p_ref(argmax ref) - p_ref(argmax cand), in [0, 1].

    Raw top-1 agreement counts every flip alike; on a flat distribution (a randomly initialised
    model, or a genuine near-tie) a flip between two tokens the reference rates almost equally
    costs nothing, and this is ~0. Where the reference is sure, a flip costs most of its
    probability. Needs only the candidate's argmax, so a device's argmax output is judged the same way.
    """
    p = np.exp(ref_logprobs)
    rows = np.arange(len(p))
    return np.maximum(p.max(axis=-1) - p[rows, np.asarray(cand_top1, dtype=np.int64)], 0.0)


ROWS = 32  # positions compared at a time: float64 work arrays stay ~50 MB each at a 201k vocabulary


class Comparer:
    """One prompt's comparison, fed aligned row blocks of both sides' logits in order (`add`),
    so neither side's [n, vocab] logits need exist at once: a 512-token prompt is 412 MB of
    float32 per runtime at gpt-oss's vocabulary. Every figure is per position."""

    def __init__(self, prompt_id: str, kind: str, ids: Sequence[int], n: int | None = None):
        """`n` rows of logits (default: one per id); row i's next token is ids[i + 1]."""
        self.prompt_id, self.kind, self.n = prompt_id, kind, len(ids) if n is None else n
        self.nxt = np.asarray(ids[1:], dtype=np.int64)
        self.kl, self.tie, self.regret = np.empty(self.n), np.empty(self.n, bool), np.empty(self.n)
        self.top1 = np.empty(self.n, bool)
        self.nll_ref, self.nll_cand = np.empty(max(self.n - 1, 0)), np.empty(max(self.n - 1, 0))
        self.bad_ref: list[int] = []
        self.bad_cand: list[int] = []
        self.done = 0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.shape != cand.shape or self.done + len(ref) > self.n:
            raise ValueError(f"{self.prompt_id}: logits shapes differ or overrun the prompt: {ref.shape} vs "
                             f"{cand.shape} at row {self.done} of {self.n}")
        for b0 in range(0, len(ref), ROWS):
            a, b = ref[b0:b0 + ROWS], cand[b0:b0 + ROWS]
            r0 = self.done + b0
            r1 = r0 + len(a)
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # non-finite logits: reported
                lr, lc = log_softmax(a), log_softmax(b)
                self.kl[r0:r1] = (np.exp(lr) * (lr - lc)).sum(axis=-1)
                top2 = np.partition(a, -2, axis=-1)[:, -2:]
                self.tie[r0:r1] = (top2[:, 1] - top2[:, 0]) < TIE_MARGIN
            cand_top1 = b.argmax(-1)
            self.top1[r0:r1] = a.argmax(-1) == cand_top1
            self.regret[r0:r1] = top1_regret(lr, cand_top1)
            k1 = min(r1, self.n - 1)  # rows that have a next token
            if k1 > r0:
                rows = np.arange(k1 - r0)
                self.nll_ref[r0:k1] = -lr[rows, self.nxt[r0:k1]]
                self.nll_cand[r0:k1] = -lc[rows, self.nxt[r0:k1]]
            self.bad_ref += (r0 + np.flatnonzero(~np.isfinite(a).all(axis=-1))).tolist()
            self.bad_cand += (r0 + np.flatnonzero(~np.isfinite(b).all(axis=-1))).tolist()
        self.done += len(ref)

    def result(self) -> PromptComparison:
        if self.done != self.n:
            raise ValueError(f"{self.prompt_id}: {self.done} of {self.n} positions compared")
        return PromptComparison(self.prompt_id, self.kind, np.maximum(self.kl, 0.0), self.top1, self.nll_ref,
                                self.nll_cand, self.tie, self.regret, np.asarray(self.bad_ref, dtype=np.int64),
                                np.asarray(self.bad_cand, dtype=np.int64))


def compare_logits(prompt_id: str, kind: str, ids: list[int], ref: np.ndarray,
                   cand: np.ndarray) -> PromptComparison:
    """Both sides' whole logits at once (a `Comparer` fed one block)."""
    if ref.shape != cand.shape:
        raise ValueError(f"{prompt_id}: logits shapes differ: {ref.shape} vs {cand.shape}")
    c = Comparer(prompt_id, kind, ids, len(ref))
    c.add(ref, cand)
    return c.result()


def finite_or_none(x):
    """Strict JSON has no NaN or Infinity: a non-finite figure is stored as null (and the gate
    has already failed it with its reason)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite_or_none(v) for v in x]
    return x


def _nonfinite(comps: list[PromptComparison]) -> dict:
    """Where the logits were not finite: a count per side and the first place, for the reason."""
    out = {}
    for side in ("reference", "candidate"):
        hits = [(c.prompt_id, getattr(c, "nonfinite_ref" if side == "reference" else "nonfinite_cand"))
                for c in comps]
        hits = [(pid, pos) for pid, pos in hits if len(pos)]
        if hits:
            out[side] = {"positions": int(sum(len(pos) for _, pos in hits)), "prompts": len(hits),
                         "first_prompt": hits[0][0], "first_position": int(hits[0][1][0])}
    return out


def greedy_match(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def summarize(comps: list[PromptComparison], greedy: list[int] | None = None,
              greedy_len: int | None = None) -> dict:
    kl = np.concatenate([c.kl for c in comps])
    top1 = np.concatenate([c.top1 for c in comps])
    tie = np.concatenate([c.near_tie for c in comps])
    nll_r = np.concatenate([c.nll_ref for c in comps])
    nll_c = np.concatenate([c.nll_cand for c in comps])
    regret = np.concatenate([c.regret for c in comps])
    ppl_r, ppl_c = float(np.exp(nll_r.mean())), float(np.exp(nll_c.mean()))
    by_pos: dict[str, list[float]] = {}
    longest = max(len(c.kl) for c in comps)
    for start in range(0, longest, POSITION_BUCKET):
        vals = [c.kl[start:start + POSITION_BUCKET] for c in comps if len(c.kl) > start]
        v = np.concatenate(vals)
        by_pos[f"{start}-{start + POSITION_BUCKET - 1}"] = [float(v.mean()), float((
            np.concatenate([c.top1[start:start + POSITION_BUCKET] for c in comps if len(c.kl) > start])).mean())]
    out = {
        "positions": int(kl.size),
        "mean_kl": float(kl.mean()),
        "p99_kl": float(np.percentile(kl, 99)),
        "max_kl": float(kl.max()),
        "top1": float(top1.mean()),
        "top1_decisive": float(top1[~tie].mean()) if (~tie).any() else 1.0,
        "near_ties": int(tie.sum()),
        "top1_regret": float(regret.mean()),
        "p99_top1_regret": float(np.percentile(regret, 99)),
        "ppl_ref": ppl_r,
        "ppl": ppl_c,
        "ppl_delta_pct": (ppl_c / ppl_r - 1.0) * 100.0,
        "kl_top1_by_position": by_pos,
        "per_prompt": [{"id": c.prompt_id, "kind": c.kind, "tokens": len(c.kl),
                        "mean_kl": float(c.kl.mean()), "top1": float(c.top1.mean()),
                        "top1_regret": float(c.regret.mean()),
                        "top1_decisive": float(c.top1[~c.near_tie].mean()) if (~c.near_tie).any() else 1.0,
                        "near_ties": int(c.near_tie.sum())} for c in comps],
    }
    if nonfinite := _nonfinite(comps):
        out["nonfinite_logits"] = nonfinite
    if greedy is not None:
        out["greedy_match_mean"] = float(np.mean(greedy))
        out["greedy_match_min"] = int(np.min(greedy))
        out["greedy_tokens"] = greedy_len
    return finite_or_none(out)


# threshold name -> (summary key, "max" or "min"). Mean KL is the primary criterion; top-1 is
# judged as regret (see top1_regret), raw top-1 is reported beside it.
CHECKS = {
    "mean_kl_max": ("mean_kl", "max"),
    "p99_kl_max": ("p99_kl", "max"),
    "top1_regret_max": ("top1_regret", "max"),
    "top1_min": ("top1", "min"),
    "ppl_delta_pct_max": ("ppl_delta_pct", "max"),
    "greedy_match_min": ("greedy_match_mean", "min"),
}
# keys a thresholds table may hold besides CHECKS
THRESHOLD_NOTES = {"reason"}


def validate_thresholds(thresholds: dict, where: str) -> None:
    """An unknown key (a typo) would silently disable a check: refuse it."""
    for key, value in thresholds.items():
        if key in THRESHOLD_NOTES or isinstance(value, dict):
            continue
        if key not in CHECKS:
            raise ValueError(f"{where}: unknown threshold {key!r}; known: {', '.join(CHECKS)}")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{where}: threshold {key} must be a number, not {value!r}")


def check(summary: dict, thresholds: dict) -> list[str]:
    """Failures as sentences; empty when every threshold holds. A judged metric missing from
    the summary is a failure, not a pass; non-finite logits on either side fail whatever the
    thresholds say, and a non-finite (null) figure fails its threshold."""
    validate_thresholds(thresholds, "thresholds")
    fails = [f"{side} logits not finite at {n['positions']} position(s) of {n['prompts']} prompt(s), "
             f"first at prompt {n['first_prompt']} position {n['first_position']}"
             for side, n in summary.get("nonfinite_logits", {}).items()]
    for key, limit in thresholds.items():
        if key not in CHECKS:
            continue
        metric, kind = CHECKS[key]
        if metric in summary and not _finite(summary[metric]):
            fails.append(f"{metric} is not finite (threshold {key} = {limit:g})")
            continue
        v = summary.get(metric)
        if v is None:
            fails.append(f"{metric} missing (threshold {key} = {limit:g})")
            continue
        if (kind == "max" and v > limit) or (kind == "min" and v < limit):
            fails.append(f"{metric} = {v:.6g} {'>' if kind == 'max' else '<'} {limit:g}")
    return fails


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
