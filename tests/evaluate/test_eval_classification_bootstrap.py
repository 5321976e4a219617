"""AUC, sensitivity/specificity, accuracy, bootstrap intervals and summaries."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from aemia.evaluate.metrics import (
    BootstrapCI,
    accuracy,
    auc,
    bootstrap_ci,
    bootstrap_metric_ci,
    bootstrap_ratio_ci,
    sensitivity_specificity,
    summarise,
)


def _pairwise_auc(y, s) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), by enumerating all pairs."""
    pos = [v for v, t in zip(s, y) if t]
    neg = [v for v, t in zip(s, y) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_hand_computed_with_ties() -> None:
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4]
    # positives 0.35 (beats 0.1), 0.8 (beats all 3), 0.4 (beats 0.1, ties two 0.4s) → (1 + 3 + 2) / 9
    assert auc(y, s) == pytest.approx(6 / 9)
    assert auc([0, 1], [0.2, 0.9]) == 1.0 and auc([0, 1], [0.9, 0.2]) == 0.0 and auc([0, 1], [0.5, 0.5]) == 0.5


def test_auc_matches_pairwise_definition_and_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) + 0.3 * y, 1)  # rounding creates many ties
    assert auc(y, s) == pytest.approx(_pairwise_auc(y, s))
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        return
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_macro_one_vs_rest_auc() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet([1, 1, 1], 90) + np.eye(3)[y] * 0.3
    p /= p.sum(axis=1, keepdims=True)
    expected = np.mean([_pairwise_auc(y == k, p[:, k]) for k in range(3)])
    assert auc(y, p) == pytest.approx(expected)
    assert auc([0, 1, 2], np.eye(3)) == 1.0
    with pytest.raises(ValueError):
        auc([1, 1, 1], [0.1, 0.2, 0.3])


def test_sensitivity_specificity_accuracy() -> None:
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    p = [1, 1, 0, 0, 0, 1, 0, 1]
    sens, spec = sensitivity_specificity(y, p)
    assert sens == pytest.approx(3 / 4) and spec == pytest.approx(3 / 4)
    assert accuracy(y, p) == pytest.approx(6 / 8)
    assert math.isnan(sensitivity_specificity([0, 0], [0, 1])[0])


def test_bootstrap_ci_contains_point_reproducible_and_narrows() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.8, 0.1, 20), rng.normal(0.8, 0.1, 2000)
    ci = bootstrap_ci(small, seed=3)
    point, lo, hi = ci
    assert isinstance(ci, BootstrapCI) and ci.n == 20
    assert point == pytest.approx(small.mean()) and lo < point < hi
    assert tuple(bootstrap_ci(small, seed=3)) == (point, lo, hi)
    assert tuple(bootstrap_ci(small, seed=4)) != (point, lo, hi)
    _, lo2, hi2 = bootstrap_ci(large, seed=3)
    assert hi2 - lo2 < (hi - lo) / 5
    # 95% interval of the mean ~ ±1.96 sd/sqrt(n)
    assert hi2 - lo2 == pytest.approx(2 * 1.96 * 0.1 / math.sqrt(2000), rel=0.2)


def test_bootstrap_ci_nan_median_and_custom_statistic() -> None:
    vals = [1.0, 2.0, float("nan"), 3.0, float("inf"), 4.0]
    ci = bootstrap_ci(vals, n_resamples=200)
    assert ci.n == 4 and ci.n_excluded == 2 and ci.point == pytest.approx(2.5)
    assert bootstrap_ci(vals, n_resamples=200, statistic=np.median).point == pytest.approx(2.5)
    trimmed = bootstrap_ci(vals, n_resamples=50, statistic=lambda x: float(np.max(x)))  # no axis= support
    assert trimmed.point == 4.0 and trimmed.hi == 4.0
    empty = bootstrap_ci([float("nan")])
    assert math.isnan(empty.point) and empty.n == 0 and empty.n_excluded == 1


def test_bootstrap_metric_ci_for_auc_skips_single_class_resamples() -> None:
    rng = np.random.default_rng(5)
    y = np.array([1] + [0] * 11)
    s = rng.random(12)
    ci = bootstrap_metric_ci(y, s, auc, n_resamples=300, seed=0)
    assert ci.n_excluded > 0  # about (11/12)^12 ≈ 35% of resamples have no positive
    assert ci.point == pytest.approx(auc(y, s)) and ci.lo <= ci.point <= ci.hi
    y2 = rng.integers(0, 2, 80)
    s2 = rng.random(80) + 0.5 * y2
    a, lo, hi = bootstrap_metric_ci(y2, s2, n_resamples=300)
    assert lo < a < hi and tuple(bootstrap_metric_ci(y2, s2, n_resamples=300)) == (a, lo, hi)


def test_bootstrap_ratio_ci() -> None:
    ci = bootstrap_ratio_ci([1, 2, 0, 3], [2, 2, 0, 4], n_resamples=200)
    assert ci.point == pytest.approx(6 / 8) and ci.lo <= ci.point <= ci.hi <= 1.0


def test_summarise_structure() -> None:
    per_case = [{"liver": {"dice": d, "hd95": h}} for d, h in [(0.9, 2.0), (0.8, 4.0), (0.7, float("nan"))]]
    out = summarise(per_case, n_resamples=200)
    assert set(out) == {"liver"} and set(out["liver"]) == {"dice", "hd95"}
    assert out["liver"]["dice"]["mean"] == pytest.approx(0.8) and out["liver"]["dice"]["n"] == 3
    lo, hi = out["liver"]["dice"]["ci"]
    assert lo <= 0.8 <= hi
    assert out["liver"]["hd95"]["n"] == 2 and out["liver"]["hd95"]["n_excluded"] == 1
