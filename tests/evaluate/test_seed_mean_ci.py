"""seed_mean_metric_ci: the seed-mean metric with a test-case bootstrap interval (one home for the active-learning
curves and the SSAC / ARL benchmark parts)."""

from __future__ import annotations

import numpy as np
import pytest

from aemia.evaluate.metrics import auc, bootstrap_metric_ci, seed_mean_metric_ci

Y = np.array([0, 0, 1, 1])
PERFECT = np.array([0.1, 0.2, 0.8, 0.9])  # AUC 1
THREE_QUARTERS = np.array([0.1, 0.8, 0.2, 0.9])  # positives beat 3 of the 4 negatives: AUC 0.75


def test_point_is_the_mean_over_seeds_of_each_seeds_metric() -> None:
    ci = seed_mean_metric_ci(Y, [PERFECT, THREE_QUARTERS], auc, n_resamples=200, seed=0)
    assert ci.point == pytest.approx(0.875) and ci.lo <= ci.point <= ci.hi <= 1.0 and ci.n == 4
    assert tuple(seed_mean_metric_ci(Y, [PERFECT, PERFECT], n_resamples=200)) == (1.0, 1.0, 1.0)


def test_a_model_minus_itself_is_exactly_zero() -> None:
    seeds = [PERFECT, THREE_QUARTERS]
    assert tuple(seed_mean_metric_ci(Y, seeds, auc, n_resamples=200, minus=seeds)) == (0.0, 0.0, 0.0)


def test_resamples_are_shared_by_every_seed_and_equal_a_plain_loop() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    seeds = [y * 0.3 + rng.random(40) for _ in range(3)]
    ci = seed_mean_metric_ci(y, seeds, auc, n_resamples=300, seed=5)
    draws = np.random.default_rng(5).integers(0, 40, size=(300, 40))
    boot = [np.mean([auc(y[i], s[i]) for s in seeds]) for i in draws if np.unique(y[i]).size > 1]
    assert (ci.lo, ci.hi) == tuple(np.quantile(boot, [0.025, 0.975]))
    assert ci.n_excluded == 300 - len(boot)
    one = seed_mean_metric_ci(y, seeds[:1], auc, n_resamples=300, seed=5)
    assert tuple(one) == tuple(bootstrap_metric_ci(y, seeds[0], auc, n_resamples=300, seed=5))


def test_undefined_resamples_are_dropped_and_no_seeds_is_an_error() -> None:
    def picky(y: np.ndarray, s: np.ndarray) -> float:
        if y[0] == 1:
            raise ValueError("undefined")
        return float(s.mean())

    ci = seed_mean_metric_ci(Y, [PERFECT], picky, n_resamples=100)
    assert np.isfinite(ci.lo) and np.isfinite(ci.hi)  # the resamples starting with a positive are dropped
    with pytest.raises(ValueError, match="at least one seed"):
        seed_mean_metric_ci(Y, [], auc)
