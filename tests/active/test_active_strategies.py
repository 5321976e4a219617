"""Query strategies: the ACFT Table 1 patterns, and a hand-made case for every strategy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from aemia.active import (
    ACFT,
    CoreSet,
    EmbeddingPool,
    acft_matrix,
    acft_scores,
    available_strategies,
    get_strategy,
    rank,
)
from aemia.active.strategies import _n_keep, acft_majority, reduce_voxel_scores

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "acft_table1.json"
VARIANTS = {"entropy": (1.0, 0.0), "diversity": (0.0, 1.0), "entropy+diversity": (1.0, 1.0)}


def _table1() -> dict:
    if not REFERENCE.is_file():
        pytest.skip(f"reference table not found at {REFERENCE}")
    return json.loads(REFERENCE.read_text())


def _cases() -> list[tuple[str, str, float, float, float]]:
    if not REFERENCE.is_file():
        return []
    out = []
    for pattern in "ABCDEFG":
        for variant, (l1, l2) in VARIANTS.items():
            for alpha, suffix in ((1.0, ""), (0.25, "_alpha_1/4")):
                out.append((pattern, variant + suffix, l1, l2, alpha))
    return out


# ------------------------------------------------------------------------------------------ ACFT


@pytest.mark.parametrize(("pattern", "key", "lambda1", "lambda2", "alpha"), _cases())
def test_acft_reproduces_table1(pattern: str, key: str, lambda1: float, lambda2: float, alpha: float) -> None:
    table = _table1()
    entry = table["patterns"][pattern]
    p = np.asarray(entry["probabilities"])
    strategy = get_strategy("acft", alpha=alpha, lambda1=lambda1, lambda2=lambda2, eps=table["eps"])
    binary = strategy.score(p[None, :])[0]  # (N, m) = P(positive) shorthand
    two_class = strategy.score(np.stack([1 - p, p], axis=-1)[None])[0]  # (N, m, K)
    assert round(float(binary), 2) == pytest.approx(entry[key], abs=1e-9)
    assert two_class == pytest.approx(binary, rel=1e-12, abs=1e-12)


def test_acft_table1_as_one_batch_and_explicit_matrix() -> None:
    table = _table1()
    patterns = np.array([table["patterns"][k]["probabilities"] for k in "ABCDEFG"])
    for variant, (l1, l2) in VARIANTS.items():
        for alpha in (1.0, 0.25):
            batch = acft_scores(patterns, alpha, l1, l2)
            for i in range(7):
                kept = acft_majority(np.stack([1 - patterns[i : i + 1], patterns[i : i + 1]], -1), alpha)[0]
                r = acft_matrix(kept, l1, l2)
                assert np.allclose(r, r.T)
                assert batch[i] == pytest.approx(r.sum(), rel=1e-9, abs=1e-9)


def test_acft_majority_selection_rule() -> None:
    table = _table1()
    assert _n_keep(0.25, 11) == 3 and _n_keep(1.0, 11) == 11 and _n_keep(0.01, 11) == 1
    b = np.asarray(table["patterns"]["B"]["probabilities"])  # mean exactly 0.5 -> ascending branch
    kept = acft_majority(np.stack([1 - b, b], -1)[None], 0.25)[0, :, 1]
    assert np.allclose(kept, [0.0, 0.1, 0.2])
    c = np.asarray(table["patterns"]["C"]["probabilities"])  # mean 6/11 > 0.5 -> descending
    kept = acft_majority(np.stack([1 - c, c], -1)[None], 0.25)[0, :, 1]
    assert np.allclose(kept, [1.0, 1.0, 1.0])


def test_acft_ranking_prefers_disagreeing_copies() -> None:
    table = _table1()
    patterns = np.array([table["patterns"][k]["probabilities"] for k in "ABCDEFG"])
    # Entropy+Diversity^(1/4): B (copies spread over [0, 1] on the minority side) first, then F/G (tied:
    # lower index F first); C, D, E (confident majority) score 0.
    ids = ACFT(alpha=0.25).rank(ACFT(alpha=0.25).score(patterns), 3)
    assert [("ABCDEFG")[i] for i in ids] == ["B", "F", "G"]
    # Entropy only, all copies: A (everything near 0.5) is the most uncertain.
    assert "ABCDEFG"[get_strategy("acft-entropy", alpha=1.0).select(patterns, 1)[0]] == "A"


def test_acft_multiclass_and_segmentation_shapes() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6, 3, 5, 5))  # N, m, K, H, W
    p = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    s = ACFT(alpha=0.5).score(p)
    assert s.shape == (4,) and np.all(s >= 0)
    # per-voxel maps equal the classification score of each voxel's copies
    voxel = acft_scores(p, 0.5)
    assert voxel.shape == (4, 5, 5)
    assert voxel[2, 1, 3] == pytest.approx(acft_scores(p[2:3, :, :, 1, 3], 0.5)[0])
    assert s == pytest.approx(voxel.reshape(4, -1).mean(axis=1))
    fg = ACFT(alpha=0.5, reduce="foreground").score(p)
    assert fg.shape == (4,)


def test_acft_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ACFT(alpha=0.0)
    with pytest.raises(ValueError):
        ACFT(lambda1=0.0, lambda2=0.0)
    with pytest.raises(ValueError):
        ACFT().score(np.full((2, 3, 2), 1.5))


# ------------------------------------------------------------------------------------------ uncertainty


def test_entropy_prefers_half_over_confident() -> None:
    p = np.array([[0.01, 0.99], [0.5, 0.5], [0.2, 0.8]])
    assert get_strategy("entropy").select(p, 3).tolist() == [1, 2, 0]


def test_margin_least_confidence_and_entropy_differ_as_defined() -> None:
    p = np.array([[0.5, 0.5, 0.0], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05]])
    # margin: a zero gap between the top two classes beats a 0.1 gap
    assert get_strategy("margin").select(p, 3).tolist() == [0, 1, 2]
    assert get_strategy("margin").score(p) == pytest.approx([1.0, 0.9, 0.15])
    # least confidence: max prob 0.4 beats 0.5
    assert get_strategy("least-confidence").select(p, 3).tolist() == [1, 0, 2]
    # entropy: the 3-way split is more uncertain than the 2-way tie
    assert get_strategy("entropy").select(p, 1).tolist() == [1]


def test_bald_prefers_disagreement_over_consistent_uncertainty() -> None:
    disagree = [[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]]
    consistent = [[0.5, 0.5]] * 4
    confident = [[0.99, 0.01]] * 4
    samples = np.stack([np.array(consistent), np.array(disagree), np.array(confident)], axis=1)  # (T, N, K)
    scores = get_strategy("bald").score(samples)
    assert scores[0] == pytest.approx(0.0, abs=1e-12)  # same prediction every pass: no epistemic term
    assert scores[1] > 0.3
    assert get_strategy("bald").rank(scores, 3).tolist() == [1, 0, 2]
    # the predictive entropy of the mean cannot tell the first two apart
    ent = get_strategy("entropy").score(samples.mean(axis=0))
    assert ent[0] == pytest.approx(ent[1])


def test_segmentation_reduction_mean_vs_foreground() -> None:
    # image 0: all confident background except a 2x2 uncertain foreground; image 1: mildly uncertain
    # background everywhere; image 2: confident background only (empty predicted foreground)
    p = np.zeros((3, 2, 8, 8))
    p[:, 0] = 0.99
    p[0, 0, :2, :2] = 0.4
    p[1, 0] = 0.8
    p[:, 1] = 1 - p[:, 0]
    mean = get_strategy("entropy").score(p)
    fg = get_strategy("entropy", reduce="foreground").score(p)
    assert mean.argmax() == 1  # the whole-image mean is dominated by background
    assert fg.argmax() == 0  # the foreground mean looks where the model predicts something
    assert fg[1] == 0.0 and fg[2] == 0.0  # empty predicted foreground -> empty_score
    assert get_strategy("entropy", reduce="foreground", empty_score=-1.0).score(p)[2] == -1.0
    with pytest.raises(ValueError):
        reduce_voxel_scores(np.zeros((2, 3)), None, "foreground")
    with pytest.raises(ValueError):
        get_strategy("margin", reduce="median").score(p)


def test_bald_segmentation_foreground_from_mean_of_samples() -> None:
    rng = np.random.default_rng(1)
    fgp = rng.uniform(0, 1, size=(5, 2, 1, 4, 4))
    samples = np.concatenate([1 - fgp, fgp], axis=2)  # (T, N, K, H, W)
    s = get_strategy("bald", reduce="foreground").score(samples)
    assert s.shape == (2,) and np.all(s >= 0)


# ------------------------------------------------------------------------------------------ random / fg


def test_random_is_seeded_and_stateless() -> None:
    a = get_strategy("random", seed=3)
    assert np.array_equal(a.select(50, 10), a.select(np.zeros((50, 2)), 10))
    assert not np.array_equal(a.select(50, 10), get_strategy("random", seed=4).select(50, 10))
    ids = a.select(50, 50)
    assert sorted(ids.tolist()) == list(range(50))


def test_foreground_random_puts_foreground_images_first() -> None:
    n = 12
    p = np.zeros((n, 2, 6, 6))
    p[:, 0] = 0.9
    has_fg = [1, 4, 5, 9]
    for i in has_fg:
        p[i, 0, 2, 2] = 0.2
    p[:, 1] = 1 - p[:, 0]
    for seed in range(5):
        top = get_strategy("fg-random", seed=seed).select(p, 4)
        assert sorted(top.tolist()) == has_fg
    orders = {tuple(get_strategy("fg-random", seed=s).select(p, 4).tolist()) for s in range(5)}
    assert len(orders) > 1  # random within the foreground group
    labels = np.argmax(p, axis=1)  # hard label maps are accepted too
    assert sorted(get_strategy("fg-random").select(labels, 4).tolist()) == has_fg
    assert get_strategy("fg-random", min_voxels=2).score(p).max() < 1.0


# ------------------------------------------------------------------------------------------ core-set


def _naive_k_centre(x: np.ndarray, labelled: np.ndarray, k: int) -> list[int]:
    centres = [c for c in labelled]
    picks: list[int] = []
    for _ in range(k):
        best, best_d = -1, -1.0
        for i in range(len(x)):
            if i in picks:
                continue
            d = min(float(np.linalg.norm(x[i] - c)) for c in centres)
            if d > best_d:
                best, best_d = i, d
        picks.append(best)
        centres.append(x[best])
    return picks


def test_coreset_picks_the_farthest_point() -> None:
    pool = np.array([[1.0, 0.0], [5.0, 0.0], [0.0, 3.0], [4.9, 0.1]])
    labelled = np.array([[0.0, 0.0]])
    s = CoreSet()
    ids = s.select(EmbeddingPool(pool, labelled), 3)
    assert ids[0] == 1  # farthest from the labelled centre
    assert ids[1] == 2  # then the point farthest from {origin, (5, 0)}, not the near-duplicate (4.9, 0.1)
    scores = s.score(EmbeddingPool(pool, labelled))
    assert scores[1] == pytest.approx(5.0)


def test_coreset_rank_equals_greedy_order() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    labelled = rng.normal(size=(4, 3))
    s = CoreSet()
    scores = s.score(EmbeddingPool(x, labelled))
    assert s.rank(scores, 12).tolist() == _naive_k_centre(x, labelled, 12)
    limited = CoreSet(max_picks=5).score(EmbeddingPool(x, labelled))
    assert s.rank(limited, 5).tolist() == s.rank(scores, 5).tolist()
    assert get_strategy("coreset").score(x).shape == (30,)  # no labelled points: starts from the mean
    with pytest.raises(ValueError):
        s.score(EmbeddingPool(x, np.zeros((2, 4))))


# ------------------------------------------------------------------------------------------ rank / registry


def test_rank_ties_are_deterministic() -> None:
    assert rank([1.0, 2.0, 2.0, 0.0, 2.0], 2).tolist() == [1, 2]
    assert rank([1.0, 2.0], 5).tolist() == [1, 0]
    assert rank([], 3).tolist() == []
    with pytest.raises(ValueError):
        rank([1.0, np.nan], 1)
    with pytest.raises(ValueError):
        rank([1.0], -1)


def test_registry() -> None:
    names = available_strategies()
    for expected in ("random", "fg-random", "entropy", "margin", "least-confidence", "bald", "coreset", "acft"):
        assert expected in names
    for name in names:
        s = get_strategy(name)
        assert dataclasses.is_dataclass(s)
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.foo = 1  # type: ignore[attr-defined]
    assert get_strategy("least_confidence").name == "least-confidence"
    assert get_strategy("Foreground_Random").name == "fg-random"
    e = get_strategy("acft-entropy")
    assert (e.lambda1, e.lambda2) == (1.0, 0.0)
    assert get_strategy("acft-diversity", alpha=1.0).alpha == 1.0
    with pytest.raises(ValueError, match="available"):
        get_strategy("nope")
    with pytest.raises(ValueError, match="no parameter"):
        get_strategy("entropy", alpha=0.5)
