"""The constrained sampler masks only when the model's own choice is not allowed: it must take exactly the
distribution the full mask gives (runtimes/base.constrained_sample)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.runtimes.base import constrained_sample

LOGITS = np.log(np.array([0.30, 0.05, 0.40, 0.10, 0.15], dtype=np.float32))
ALLOWED = {1, 3, 4}  # the mass A = 0.30; the most likely token (2) is not allowed


class Mask:
    def __init__(self, allowed: set[int]):
        self.allowed, self.applied, self.asked = allowed, 0, 0

    def allows(self, token: int) -> bool:
        self.asked += 1
        return token in self.allowed

    def apply(self, logits: np.ndarray) -> np.ndarray:
        self.applied += 1
        return np.where(np.isin(np.arange(len(logits)), list(self.allowed)), logits, -np.inf).astype(logits.dtype)

    def advance(self, token: int) -> None:
        pass


def test_greedy_masks_only_when_the_argmax_is_not_allowed():
    rng = np.random.default_rng(0)
    m = Mask(ALLOWED)
    assert constrained_sample(m, LOGITS, 0.0, 1.0, rng) == 4 and m.applied == 1  # 2 refused: masked argmax
    m = Mask({2, 3})
    assert constrained_sample(m, LOGITS, 0.0, 1.0, rng) == 2 and m.applied == 0  # allowed: no mask


def test_sampling_takes_the_masked_distribution_exactly():
    """p(t)/A for each allowed t: the unmasked draw kept when allowed, else a masked draw. A sampler that
    fell back to the masked argmax, or kept disallowed draws, is off by far more than the tolerance."""
    rng, n = np.random.default_rng(1), 40_000
    m = Mask(ALLOWED)
    counts = np.bincount([constrained_sample(m, LOGITS, 1.0, 1.0, rng) for _ in range(n)], minlength=5) / n
    p = np.exp(LOGITS.astype(np.float64))
    want = np.where(np.isin(np.arange(5), list(ALLOWED)), p, 0) / p[list(ALLOWED)].sum()
    assert np.abs(counts - want).max() < 0.012, (counts, want)  # 5 standard errors at n = 40 000
    assert 0.6 * n < m.applied < 0.8 * n  # masked only after a refused draw: 1 − A = 0.7 of them


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_a_nucleus_is_cut_after_the_mask(temperature):
    """top_p < 1 over the unmasked distribution would pick its nucleus before the mask: not asked first."""
    m = Mask(ALLOWED)
    rng = np.random.default_rng(2)
    for _ in range(50):
        assert constrained_sample(m, LOGITS, temperature, 0.5, rng) in ALLOWED
    assert m.asked == 0 and m.applied == 50
