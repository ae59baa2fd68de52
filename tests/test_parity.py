"""Parity: metrics, and GGUF F16 in llama.cpp against transformers on the committed eval set."""

import numpy as np
import pytest

from edgeport.parity import gate
from edgeport.parity.metrics import check, compare_logits, greedy_match, summarize
from edgeport.runtimes.llamacpp import LlamaCppRuntime
from edgeport.runtimes.reference import ReferenceRuntime
from tests.conftest import gguf_of


def test_metrics_on_known_distributions():
    ref = np.log(np.array([[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]))
    same = compare_logits("p", "short", [0, 1], ref, ref + 3.0)  # shift-invariant
    assert np.allclose(same.kl, 0) and same.top1.all() and not same.near_tie.any()
    tie = np.log(np.array([[0.4, 0.4, 0.2]]))
    assert compare_logits("t", "short", [0], tie, tie).near_tie.tolist() == [True]
    cand = np.log(np.array([[0.25, 0.5, 0.25], [0.9, 0.05, 0.05]]))
    c = compare_logits("p", "short", [0, 1], ref, cand)
    assert c.kl[0] == pytest.approx(0.5 * np.log(2) + 0.25 * np.log(0.5))
    assert c.top1.tolist() == [False, True]
    assert c.nll_ref[0] == pytest.approx(np.log(4)) and c.nll_cand[0] == pytest.approx(np.log(2))
    s = summarize([c], [3], 4)
    assert s["ppl_ref"] == pytest.approx(4.0) and s["ppl_delta_pct"] == pytest.approx(-50.0)
    assert check(s, {"top1_min": 0.9}) == ["top1 = 0.5 < 0.9"]
    assert check(s, {"top1_min": 0.5, "greedy_match_min": 3}) == []
    assert greedy_match([1, 2, 3], [1, 2, 4]) == 2


def _fidelity(model_dir, gguf_dir):
    ref = ReferenceRuntime(model_dir)
    art = LlamaCppRuntime(gguf_of(model_dir, gguf_dir), ref.info)
    try:
        return gate.run({"reference": ref, "unquantized": art}, {}, max_tokens=512, greedy_tokens=8)
    finally:
        art.close()


def _assert_exact(report):
    """Top-1 100 % wherever the reference has a top-1 at all (top-2 logits apart by more than
    TIE_MARGIN); positions closer than that are near-ties F16 rounding may flip, and must be rare."""
    s = report["stages"]["fidelity"]["summary"]
    for p in s["per_prompt"]:
        assert p["top1_decisive"] == 1.0, p
        assert p["mean_kl"] < 1e-4, p
    assert s["near_ties"] <= 0.05 * s["positions"] and s["top1"] >= 0.995  # decisive covers >= 95 %
    assert s["greedy_match_min"] == 8


def test_llama_f16_matches_transformers_on_every_prompt(llama_dir, gguf_dir):
    _assert_exact(_fidelity(llama_dir, gguf_dir))


def test_gpt_oss_with_yarn_truncate_matches_on_every_prompt(truncate_true_dir, gguf_dir):
    report = _fidelity(truncate_true_dir, gguf_dir)
    assert max(report["long_prompt_tokens"]) > 4 * 64  # well past the sliding window
    _assert_exact(report)


def test_gpt_oss_truncate_false_drift_is_reported_by_position(gpt_oss_dir, truncate_true_dir, gguf_dir):
    """The bundled gpt-oss says truncate=false (as openai/gpt-oss-20b does); llama.cpp always
    rounds the YaRN correction range, so KL grows with position. The report must show it."""
    drift = _fidelity(gpt_oss_dir, gguf_dir)["stages"]["fidelity"]["summary"]["kl_top1_by_position"]
    exact = _fidelity(truncate_true_dir, gguf_dir)["stages"]["fidelity"]["summary"]["kl_top1_by_position"]
    first, last = next(iter(drift)), list(drift)[-1]
    assert drift[last][0] > 10 * drift[first][0]
    assert drift[last][0] > 10 * exact[last][0]


def test_compare_logits_in_row_blocks_equals_one_block(monkeypatch):
    """compare_logits works ROWS positions at a time (a 512-token prompt at gpt-oss's 201k
    vocabulary would hold GBs of float64 temporaries): every figure equals the one-block result,
    across a partial last block, a near-tie and a non-finite row."""
    from edgeport.parity import metrics

    rng = np.random.default_rng(0)
    n, v = 70, 50
    ref = rng.normal(0, 3, (n, v)).astype(np.float32)
    cand = ref + rng.normal(0, 0.5, (n, v)).astype(np.float32)
    ref[5, :2] = 100.0  # a near-tie
    cand[40, 7] = np.nan
    ids = rng.integers(0, v, n).tolist()
    blocked = metrics.compare_logits("p", "long", ids, ref, cand)
    monkeypatch.setattr(metrics, "ROWS", 10**9)
    whole = metrics.compare_logits("p", "long", ids, ref, cand)
    for f in ("kl", "top1", "nll_ref", "nll_cand", "near_tie", "regret", "nonfinite_ref", "nonfinite_cand"):
        np.testing.assert_array_equal(getattr(blocked, f), getattr(whole, f), err_msg=f)
    assert blocked.near_tie[5] and blocked.nonfinite_cand.tolist() == [40] and len(blocked.nll_ref) == n - 1
