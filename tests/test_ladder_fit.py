"""The approach-3 fit on synthetic studies from a known law: how well a study shaped like the CPU ladder
(6 sizes over 100x in N, 5 token budgets per size, 0.5% multiplicative noise: the residual target of
the study) recovers the law, and whether its bootstrap intervals cover the truth at their nominal rate."""

import numpy as np
import pytest

from compactlm.ladder import fit as F

TRUTH = F.LawFit(E=1.9, A=70.0, alpha=0.34, B=260.0, beta=0.29)
SIZES = np.geomspace(3e4, 3e6, 6)
TOKENS_PER_PARAM = np.array([10, 20, 40, 80, 160])  # one WSD run per size, cooled down at five budgets
NOISE = 0.005


def draw(seed: int):
    rng = np.random.default_rng(seed)
    N = np.repeat(SIZES, len(TOKENS_PER_PARAM))
    D = N * np.tile(TOKENS_PER_PARAM, len(SIZES))
    return N, D, TRUTH.predict(N, D) * np.exp(rng.normal(0, NOISE, len(N)))


def test_the_fit_recovers_a_known_law_within_five_percent():
    errors, extrapolated = [], []
    for seed in range(12):
        N, D, L = draw(seed)
        fit = F.fit_law(N, D, L, starts=16)
        errors.append([fit.alpha / TRUTH.alpha - 1, fit.beta / TRUTH.beta - 1, fit.E / TRUTH.E - 1,
                       fit.a / TRUTH.a - 1])
        # held out: 4x the largest size at 4x its largest compute, and the smallest size 16x further trained
        for n, d in ((4 * SIZES[-1], 4 * 160 * SIZES[-1]), (SIZES[0], 16 * 160 * SIZES[0])):
            extrapolated.append(float(fit.predict(n, d)) / float(TRUTH.predict(n, d)) - 1)
    median = np.median(np.abs(errors), axis=0)
    assert (median < 0.05).all(), dict(zip(("alpha", "beta", "E", "a"), median))
    # the target for a held-out prediction is 1.5%: at this noise, most draws meet it, the worst
    # (1.6% here) does not, so a real study's prediction miss of that size is noise, not a broken law
    assert np.median(np.abs(extrapolated)) < 0.005 and np.percentile(np.abs(extrapolated), 90) < 0.015
    assert np.max(np.abs(extrapolated)) < 0.025


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_truth_at_about_their_nominal_rate():
    """95% percentile intervals from 20 resamples each, over 12 independent studies: a covering rate
    far below 95% (9 or fewer of 12 has probability about 2% if the rate were 95%) fails."""
    covered = {"alpha": 0, "beta": 0, "E": 0}
    for seed in range(12):
        N, D, L = draw(100 + seed)
        fit = F.fit_law(N, D, L, starts=16)
        boots = F.bootstrap_law(N, D, L, 20, seed, around=fit)
        for key in covered:
            low, high = F.interval([getattr(b, key) for b in boots], 0.95)
            covered[key] += low <= getattr(TRUTH, key) <= high
    assert all(count >= 10 for count in covered.values()), covered
