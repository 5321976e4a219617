"""Active-learning query strategies behind one stateless interface.

Every strategy is a frozen dataclass whose fields are its parameters, in the style of baal's heuristics:

* ``score(predictions) -> np.ndarray`` returns one float per candidate; **higher = more worth annotating**.
* ``rank(scores, k) -> np.ndarray`` returns the indices of the ``k`` highest scores, best first; ties are
  broken by the lower index (a stable sort), so the same scores always give the same ids.
* ``select(predictions, k)`` is ``rank(score(predictions), k)``.

Strategies hold no state between calls (no fitted model, no hidden RNG state): the same inputs and parameters
always give the same scores. :func:`get_strategy` builds one by name, :func:`available_strategies` lists names.

Input conventions (``K`` classes, channel 0 = background for segmentation):

=====================  ==============================================  =============================================
strategy               classification input                            segmentation input (per-voxel maps)
=====================  ==============================================  =============================================
random                 anything with a length ``N`` (or the int ``N``) same
fg-random              --                                              probabilities ``(N, K, *spatial)``
entropy / margin /     probabilities ``(N, K)``                        probabilities ``(N, K, *spatial)``
least-confidence
bald                   MC-dropout samples ``(T, N, K)``                ``(T, N, K, *spatial)``
coreset                embeddings ``(N, D)`` or :class:`EmbeddingPool`  same (one embedding per image)
acft                   ``(N, m, K)`` (or ``(N, m)`` = P(positive))      ``(N, m, K, *spatial)``
=====================  ==============================================  =============================================

Segmentation reduction (``reduce`` parameter of the uncertainty strategies and ACFT): a per-voxel score map
``(N, *spatial)`` becomes one score per image by

* ``"mean"``: the mean over all voxels;
* ``"foreground"``: the mean over the *predicted foreground*, the voxels whose arg-max class of the mean
  prediction (mean over MC samples for BALD, over augmented copies for ACFT) is not channel 0. An image with
  an empty predicted foreground gets ``empty_score`` (default ``0.0``, the lowest value every built-in score
  can take), so it ranks after every image with foreground; ties among such images fall back to the index;
* ``"likely-foreground"``: the same mean over the voxels whose mean predicted probability of *not* being
  background is at least :data:`LIKELY_FOREGROUND` (0.1): the predicted foreground plus the voxels the model is
  unsure about, so a case whose organ the model half-sees is still scored on it (the 3D default,
  :mod:`aemia.active.volume_scoring`); empty regions get ``empty_score`` as above.

Literature: entropy, margin and least confidence are the classical uncertainty-sampling scores; BALD is
Houlsby et al. 2011 with MC dropout (Gal et al., ICML 2017); core-set is the k-centre greedy of Sener &
Savarese (ICLR 2018); foreground-aware random follows nnActive (Lüth et al. 2025, METHODS.md/PEERS.md);
ACFT is Zhou et al., CVPR 2017 / MedIA 2021, implemented from ``reference/METHODS.md`` §5.1 and checked
against the seven Table 1 patterns in ``reference/acft_table1.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np

ACFT_CHUNK = 1 << 16  # voxels per chunk of ACFT's per-voxel scores (segmentation)
EPS: float = float(np.finfo(np.float64).eps)  # 2.220446049250313e-16, the eps of the ACFT Matlab demo (§5.1)

Reduce = Literal["mean", "foreground", "likely-foreground"]
REDUCTIONS = ("mean", "foreground", "likely-foreground")
LIKELY_FOREGROUND = 0.1  # "likely-foreground": voxels whose mean P(not background) is at least this

# What a strategy's ``score`` takes (``Strategy.needs``); the scoring layer (:mod:`aemia.active.scoring`)
# maps each to the forward passes that produce it, so it never dispatches on strategy classes.
POOL_SIZE = "pool-size"  # just N (random)
PROBABILITIES = "probabilities"  # (N, K, *spatial) softmax of one forward pass
LABEL_MAPS = "label-maps"  # (N, *spatial) arg-max maps of the whole pool at once
MC_SAMPLES = "mc-samples"  # (T, N, K, *spatial) softmax of T MC-dropout passes
AUGMENTED_COPIES = "augmented-copies"  # (N, m, K, *spatial) softmax of m test-time copies, mapped back
EMBEDDINGS = "embeddings"  # EmbeddingPool of the whole pool and the labelled cases
NEEDS = (POOL_SIZE, PROBABILITIES, LABEL_MAPS, MC_SAMPLES, AUGMENTED_COPIES, EMBEDDINGS)

__all__ = [
    "ACFT",
    "AUGMENTED_COPIES",
    "EMBEDDINGS",
    "LABEL_MAPS",
    "MC_SAMPLES",
    "NEEDS",
    "POOL_SIZE",
    "PROBABILITIES",
    "LIKELY_FOREGROUND",
    "REDUCTIONS",
    "BALD",
    "EPS",
    "CoreSet",
    "EmbeddingPool",
    "Entropy",
    "ForegroundRandom",
    "LeastConfidence",
    "Margin",
    "RandomStrategy",
    "Strategy",
    "acft_majority",
    "acft_matrix",
    "acft_scores",
    "available_strategies",
    "get_strategy",
    "rank",
    "reduce_voxel_scores",
]


# ------------------------------------------------------------------------------------------ helpers


def rank(scores: np.ndarray | Sequence[float], k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores``, best first; ties go to the lower index.

    ``k`` larger than the number of candidates returns all of them. NaN scores are an error (they would
    silently sort last or first depending on the library).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional (one per candidate), got shape {s.shape}")
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if np.isnan(s).any():
        raise ValueError(f"scores contain NaN at indices {np.flatnonzero(np.isnan(s))[:10].tolist()}")
    order = np.argsort(-s, kind="stable")
    return order[: int(k)].astype(np.int64)


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Shannon entropy in nats along ``axis`` with 0·ln 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=axis)


def _check_probs(p: np.ndarray, class_axis: int, what: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim <= class_axis or p.shape[class_axis] < 2:
        raise ValueError(f"{what}: need at least 2 class channels on axis {class_axis}, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{what}: probabilities contain NaN or inf")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise ValueError(f"{what}: probabilities must lie in [0, 1] (got min {p.min():.3g}, max {p.max():.3g})")
    return np.clip(p, 0.0, 1.0)


def reduce_voxel_scores(
    voxel_scores: np.ndarray,
    mean_probs: np.ndarray | None = None,
    reduce: Reduce = "mean",
    empty_score: float = 0.0,
) -> np.ndarray:
    """Per-image scores ``(N,)`` from per-voxel score maps ``(N, *spatial)``.

    ``mean_probs`` ``(N, K, *spatial)`` defines the predicted foreground (arg-max ≠ channel 0) for
    ``reduce="foreground"``, or the likely foreground (1 − p_0 ≥ :data:`LIKELY_FOREGROUND`) for
    ``"likely-foreground"``; images whose region is empty get ``empty_score``.
    A 1-D ``voxel_scores`` (classification) is returned unchanged.
    """
    v = np.asarray(voxel_scores, dtype=np.float64)
    if v.ndim == 1:
        return v
    n = v.shape[0]
    flat = v.reshape(n, -1)
    if reduce == "mean":
        return flat.mean(axis=1)
    if reduce in ("foreground", "likely-foreground"):
        if mean_probs is None:
            raise ValueError(f'reduce="{reduce}" needs the mean class probabilities')
        mp = np.asarray(mean_probs)
        fg = (np.argmax(mp, axis=1) != 0 if reduce == "foreground" else 1.0 - mp[:, 0] >= LIKELY_FOREGROUND)
        fg = fg.reshape(n, -1)
        if fg.shape != flat.shape:
            raise ValueError(f"foreground mask shape {fg.shape} differs from score map shape {flat.shape}")
        count = fg.sum(axis=1)
        total = np.where(fg, flat, 0.0).sum(axis=1)
        out = np.full(n, float(empty_score))
        has = count > 0
        out[has] = total[has] / count[has]
        return out
    raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")


# ------------------------------------------------------------------------------------------ base


@dataclass(frozen=True)
class Strategy:
    """Base class: stateless ``score`` then deterministic top-``k`` ``rank``.

    ``needs`` says what ``score`` takes (one of :data:`NEEDS`); ``tasks`` the project tasks it applies to.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[str] = PROBABILITIES
    tasks: ClassVar[tuple[str, ...]] = ("segmentation", "classification")

    def score(self, predictions: Any) -> np.ndarray:  # pragma: no cover - abstract
        """One float per candidate, higher = more worth annotating."""
        raise NotImplementedError

    def rank(self, scores: np.ndarray | Sequence[float], k: int) -> np.ndarray:
        """Indices of the ``k`` best candidates (ties → lower index); see :func:`rank`."""
        return rank(scores, k)

    def select(self, predictions: Any, k: int) -> np.ndarray:
        """``rank(score(predictions), k)``."""
        return self.rank(self.score(predictions), k)


def _pool_size(predictions: Any) -> int:
    if isinstance(predictions, (int, np.integer)) and not isinstance(predictions, bool):
        if predictions < 0:
            raise ValueError(f"pool size must be non-negative, got {predictions}")
        return int(predictions)
    if isinstance(predictions, EmbeddingPool):
        return len(predictions.pool)
    return len(predictions)


@dataclass(frozen=True)
class RandomStrategy(Strategy):
    """Uniform random selection (the baseline every claim is measured against).

    Attributes:
        seed: seed of the ``numpy.random.Generator`` created afresh on every call, so the strategy stays
            stateless and reproducible; pass a different seed per round/repeat (e.g. ``base_seed + round``).
    """

    name: ClassVar[str] = "random"
    needs: ClassVar[str] = POOL_SIZE
    seed: int = 0

    def score(self, predictions: Any) -> np.ndarray:
        """Uniform [0, 1) scores; ``predictions`` is only used for its length (or is the int ``N``)."""
        return np.random.default_rng(self.seed).random(_pool_size(predictions))


@dataclass(frozen=True)
class ForegroundRandom(Strategy):
    """Foreground-aware random selection for segmentation (after nnActive, Lüth et al. 2025).

    Rule used here (image level): an image whose *predicted* foreground (voxels whose arg-max class is not
    channel 0) has at least ``min_voxels`` voxels is "foreground"; all foreground images rank before all
    others, in random order within each group (score = U[0,1) + 1 for foreground images, U[0,1) otherwise).
    nnActive samples 3D *patches* with a fraction centred on (ground-truth) foreground; in a real unlabelled
    pool the ground truth is unknown, so the current model's prediction stands in for it.

    Attributes:
        seed: seed of the fresh ``numpy.random.Generator`` used on every call (stateless, reproducible).
        min_voxels: minimum number of predicted foreground voxels for an image to count as foreground.
    """

    name: ClassVar[str] = "fg-random"
    needs: ClassVar[str] = LABEL_MAPS
    tasks: ClassVar[tuple[str, ...]] = ("segmentation",)
    seed: int = 0
    min_voxels: int = 1

    def score(self, predictions: Any) -> np.ndarray:
        """``predictions``: probabilities ``(N, K, *spatial)``, hard label maps ``(N, *spatial)`` of ints, or a
        list of ``N`` label maps of different shapes (3D volumes)."""
        p = np.asarray(predictions) if not isinstance(predictions, (list, tuple)) else None
        if p is None:
            fg_count = np.array([np.count_nonzero(np.asarray(m)) for m in predictions], dtype=np.int64)
        elif p.ndim >= 2 and np.issubdtype(p.dtype, np.floating):
            p = _check_probs(p, 1, "fg-random")
            fg_count = (np.argmax(p, axis=1) != 0).reshape(p.shape[0], -1).sum(axis=1)
        elif p.ndim >= 1 and (np.issubdtype(p.dtype, np.integer) or p.dtype == bool):
            fg_count = (p != 0).reshape(p.shape[0], -1).sum(axis=1)
        else:
            raise ValueError(f"fg-random: need probabilities (N, K, ...) or label maps (N, ...), got {p.shape}")
        u = np.random.default_rng(self.seed).random(len(fg_count))
        return u + (fg_count >= self.min_voxels).astype(np.float64)


@dataclass(frozen=True)
class _Uncertainty(Strategy):
    """Shared handling of ``(N, K)`` / ``(N, K, *spatial)`` probabilities and the segmentation reduction."""

    reduce: Reduce = "mean"
    empty_score: float = 0.0

    def _voxel(self, p: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, predictions: Any) -> np.ndarray:
        p = _check_probs(predictions, 1, self.name)
        return reduce_voxel_scores(self._voxel(p), p, self.reduce, self.empty_score)


@dataclass(frozen=True)
class Entropy(_Uncertainty):
    """Predictive entropy −Σ_k p_k ln p_k (nats); maximal for a uniform prediction.

    Attributes:
        reduce: ``"mean"`` or ``"foreground"`` for segmentation maps (module docstring).
        empty_score: score of an image with empty predicted foreground under ``reduce="foreground"``.
    """

    name: ClassVar[str] = "entropy"

    def _voxel(self, p: np.ndarray) -> np.ndarray:
        return _entropy(p, axis=1)


@dataclass(frozen=True)
class Margin(_Uncertainty):
    """Margin sampling: score = 1 − (p_top1 − p_top2); a small gap between the two best classes scores high.

    Attributes:
        reduce: ``"mean"`` or ``"foreground"`` for segmentation maps (module docstring).
        empty_score: score of an image with empty predicted foreground under ``reduce="foreground"``.
    """

    name: ClassVar[str] = "margin"

    def _voxel(self, p: np.ndarray) -> np.ndarray:
        top2 = np.sort(p, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])


@dataclass(frozen=True)
class LeastConfidence(_Uncertainty):
    """Least confidence: score = 1 − max_k p_k.

    Attributes:
        reduce: ``"mean"`` or ``"foreground"`` for segmentation maps (module docstring).
        empty_score: score of an image with empty predicted foreground under ``reduce="foreground"``.
    """

    name: ClassVar[str] = "least-confidence"

    def _voxel(self, p: np.ndarray) -> np.ndarray:
        return 1.0 - p.max(axis=1)


@dataclass(frozen=True)
class BALD(Strategy):
    """BALD with MC dropout: mutual information H[mean_t p_t] − mean_t H[p_t] (Houlsby 2011; Gal 2017).

    High when the MC samples *disagree* (epistemic uncertainty), zero when every sample gives the same
    prediction however uncertain that prediction is.

    Attributes:
        reduce: ``"mean"`` or ``"foreground"`` for segmentation maps; the foreground is taken from the mean
            over the MC samples.
        empty_score: score of an image with empty predicted foreground under ``reduce="foreground"``.
    """

    name: ClassVar[str] = "bald"
    needs: ClassVar[str] = MC_SAMPLES
    reduce: Reduce = "mean"
    empty_score: float = 0.0

    def score(self, predictions: Any) -> np.ndarray:
        """``predictions``: MC-dropout probabilities ``(T, N, K, *spatial)``, ``T`` ≥ 1 forward passes."""
        p = _check_probs(predictions, 2, "bald")
        mean = p.mean(axis=0)
        mi = _entropy(mean, axis=1) - _entropy(p, axis=2).mean(axis=0)
        mi = np.maximum(mi, 0.0)  # tiny negative values from rounding
        return reduce_voxel_scores(mi, mean, self.reduce, self.empty_score)


@dataclass(frozen=True)
class EmbeddingPool:
    """Core-set input: pool embeddings ``(N, D)`` and the already-labelled ones ``(L, D)`` (may be empty)."""

    pool: np.ndarray
    labelled: np.ndarray | None = None


@dataclass(frozen=True)
class CoreSet(Strategy):
    """Core-set selection by k-centre greedy (Sener & Savarese, ICLR 2018) on embeddings.

    The already-labelled embeddings are the initial centres. Each greedy step picks the pool point
    farthest (Euclidean) from its nearest centre and makes it a centre. The score of a point is its
    distance to the nearest centre *at the moment it was picked*; these radii never increase along the
    greedy order, and equal radii are picked lowest index first, so ``rank(score, k)`` returns exactly the
    first ``k`` greedy picks for every ``k``.

    With no labelled embeddings the pool mean serves as the single initial centre (a deterministic
    choice), so the first pick is the point farthest from the mean.

    Attributes:
        max_picks: run the greedy for at most this many picks (``None`` = the whole pool, O(N²·D));
            points not picked keep their current nearest-centre distance, which never exceeds the last
            pick's radius, so the top ``max_picks`` ranks are still the greedy order.
    """

    name: ClassVar[str] = "coreset"
    needs: ClassVar[str] = EMBEDDINGS
    max_picks: int | None = None

    def score(self, predictions: Any) -> np.ndarray:
        """``predictions``: :class:`EmbeddingPool`, or a pool array ``(N, D)`` with no labelled points."""
        if isinstance(predictions, EmbeddingPool):
            pool, labelled = predictions.pool, predictions.labelled
        else:
            pool, labelled = predictions, None
        x = np.asarray(pool, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"coreset: pool embeddings must be (N, D), got shape {x.shape}")
        n = x.shape[0]
        if n == 0:
            return np.zeros(0)
        scores = np.empty(n)
        picked = np.zeros(n, dtype=bool)
        if labelled is not None and len(labelled):
            c = np.asarray(labelled, dtype=np.float64)
            if c.ndim != 2 or c.shape[1] != x.shape[1]:
                raise ValueError(f"coreset: labelled embeddings must be (L, {x.shape[1]}), got {c.shape}")
            dist = np.full(n, np.inf)
            for start in range(0, c.shape[0], 256):  # chunked to bound memory at N x 256
                dist = np.minimum(dist, _cdist(x, c[start : start + 256]).min(axis=1))
        else:
            dist = np.linalg.norm(x - x.mean(axis=0), axis=1)
        budget = n if self.max_picks is None else min(n, max(0, int(self.max_picks)))
        for _ in range(budget):
            masked = np.where(picked, -np.inf, dist)
            i = int(np.argmax(masked))  # argmax → lowest index among ties
            scores[i] = dist[i]
            picked[i] = True
            dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
        scores[~picked] = dist[~picked]
        return scores


def _cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) via |a|² + |b|² − 2ab (no (Na, Nb, D) temporary)."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


# ------------------------------------------------------------------------------------------ ACFT


def _as_acft_probs(predictions: Any) -> np.ndarray:
    """``(N, m, K, *spatial)`` float64 probabilities; ``(N, m)`` is the binary P(positive) shorthand."""
    p = np.asarray(predictions, dtype=np.float64)
    if p.ndim == 2:
        p = np.stack([1.0 - p, p], axis=2)
    if p.ndim < 3:
        raise ValueError(f"acft: need (N, m, K[, *spatial]) probabilities or (N, m) binary, got shape {p.shape}")
    return _check_probs(p, 2, "acft")


def _n_keep(alpha: float, m: int) -> int:
    """round(α·m) with halves rounded up (11·1/4 = 2.75 → 3, as in the Matlab demo), clamped to [1, m]."""
    return min(m, max(1, int(math.floor(alpha * m + 0.5))))


def acft_majority(p: np.ndarray, alpha: float, tie_tol: float = 1e-9) -> np.ndarray:
    """α-majority selection of ACFT (Zhou et al. CVPR'17, METHODS.md §5.1).

    ``p``: ``(N, m, K, *spatial)``. Returns ``(N, round(α·m), K, *spatial)``: per candidate (and voxel),
    the majority class c* is the arg-max of the mean over the m copies; the copies are sorted by
    p[c*] descending and the first round(α·m) are kept. In the binary case this is the paper's rule: if
    mean(p) > 0.5 sort descending, else ascending (c* = 0 ⇔ ascending in P(positive)). A mean within
    ``tie_tol`` of the maximum counts as tied and the lowest class index wins, so a binary mean of exactly
    0.5 (Table 1 pattern B) takes the ascending branch even when rounding puts the float mean a hair above.
    Ties between copies keep their original order (stable sort).
    """
    m = p.shape[1]
    keep = _n_keep(alpha, m)
    if keep == m:
        return p
    mean = p.mean(axis=1)  # (N, K, *spatial)
    is_max = mean >= mean.max(axis=1, keepdims=True) - tie_tol
    major = np.argmax(is_max, axis=1)  # first class within tolerance of the max
    conf = np.take_along_axis(p, major[:, None, None, ...], axis=2)[:, :, 0]  # (N, m, *spatial)
    order = np.argsort(-conf, axis=1, kind="stable")[:, :keep]  # (N, keep, *spatial)
    return np.take_along_axis(p, order[:, :, None, ...], axis=1)


def acft_matrix(
    probs: np.ndarray | Sequence[float], lambda1: float = 1.0, lambda2: float = 1.0, eps: float = EPS
) -> np.ndarray:
    """The ACFT matrix R of one candidate's (already majority-selected) copies, explicitly.

    ``probs``: ``(m, K)`` probabilities or ``(m,)`` = P(positive). R(j,j) = λ1·e_j with
    e_j = −Σ_k p_jk ln(p_jk + eps); R(j,l) = λ2·Σ_k (p_jk − p_lk)·ln((p_jk + eps)/(p_lk + eps)).
    For reading and testing; :func:`acft_scores` computes Σ R in closed form.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    logp = np.log(p + eps)
    diff = p[:, None, :] - p[None, :, :]
    dlog = logp[:, None, :] - logp[None, :, :]
    r = lambda2 * (diff * dlog).sum(-1)
    np.fill_diagonal(r, lambda1 * -(p * logp).sum(-1))
    return r


def acft_scores(
    predictions: Any, alpha: float = 1.0, lambda1: float = 1.0, lambda2: float = 1.0, eps: float = EPS
) -> np.ndarray:
    """ACFT candidate scores a_i = Σ_{j,l} R_i(j,l) before any segmentation reduction.

    Returns ``(N,)`` for classification input, ``(N, *spatial)`` per-voxel maps for segmentation input.
    Σ_{j,l} R uses Σ_{j,l} (p_j − p_l)(L_j − L_l) = 2·(n·Σ_j p_j L_j − Σ_j p_j · Σ_j L_j) per class
    (L = ln(p + eps), n kept copies), which equals the explicit matrix sum (:func:`acft_matrix`) but costs
    O(n) instead of O(n²) per candidate/voxel.
    """
    p = acft_majority(_as_acft_probs(predictions), alpha)
    n = p.shape[1]
    logp = np.log(p + eps)
    plogp = p * logp
    entropy = np.maximum(-plogp.sum(axis=(1, 2)), 0.0)  # ln(1 + eps) makes p = 1 a hair negative
    diversity = 2.0 * (n * plogp.sum(axis=1) - p.sum(axis=1) * logp.sum(axis=1)).sum(axis=1)
    return lambda1 * entropy + lambda2 * np.maximum(diversity, 0.0)


@dataclass(frozen=True)
class ACFT(Strategy):
    """Active, continual fine-tuning selection criterion (Zhou et al., CVPR 2017; MedIA 2021; METHODS.md §5.1).

    Each candidate has m augmented copies (patches around a detected candidate, or test-time augmentations
    of an image, already mapped back to the original frame for segmentation). The copies' probabilities go
    through α-majority selection (:func:`acft_majority`), then the score is Σ R with R's diagonal the
    entropy of each kept copy (× λ1) and its off-diagonal the symmetric KL-style diversity between two kept
    copies (× λ2). The paper's variants: Entropy (λ1=1, λ2=0), Diversity (0, 1), Entropy+Diversity (1, 1),
    each with α = 1 (all copies) or α = 1/4 ("^α").

    Attributes:
        alpha: fraction of copies kept by majority selection, round half up (§5.1; the demo uses 1/4,
            11 copies → 3); 1.0 keeps all copies.
        lambda1: weight of the entropy diagonal of R (§5.1).
        lambda2: weight of the diversity off-diagonal of R (§5.1).
        eps: added inside the logarithms (§5.1; Matlab's eps = 2.22e-16 reproduces Table 1).
        reduce: segmentation reduction of the per-voxel scores, ``"mean"`` or ``"foreground"``; the
            foreground is the arg-max of the mean over the m copies.
        empty_score: score of an image with empty predicted foreground under ``reduce="foreground"``.
    """

    name: ClassVar[str] = "acft"
    needs: ClassVar[str] = AUGMENTED_COPIES
    alpha: float = 0.25
    lambda1: float = 1.0
    lambda2: float = 1.0
    eps: float = EPS
    reduce: Reduce = "mean"
    empty_score: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"acft: alpha must be in (0, 1], got {self.alpha}")
        if self.lambda1 < 0 or self.lambda2 < 0 or self.lambda1 + self.lambda2 == 0:
            raise ValueError(f"acft: lambda1, lambda2 must be >= 0 and not both 0, got {self.lambda1}, {self.lambda2}")

    def score(self, predictions: Any) -> np.ndarray:
        """``predictions``: ``(N, m, K)``, ``(N, m)`` binary P(positive), or ``(N, m, K, *spatial)``."""
        raw = np.asarray(predictions)
        if raw.ndim <= 3:
            return acft_scores(_as_acft_probs(raw), self.alpha, self.lambda1, self.lambda2, self.eps)
        # per-voxel scores chunk by chunk (voxels are independent): bounded float64 temporaries for 3D volumes
        flat = raw.reshape(raw.shape[:3] + (-1,))
        scores, means = [], []
        for a in range(0, flat.shape[3], ACFT_CHUNK):
            p = _as_acft_probs(flat[..., a:a + ACFT_CHUNK])
            scores.append(acft_scores(p, self.alpha, self.lambda1, self.lambda2, self.eps))
            means.append(p.mean(axis=1))
        return reduce_voxel_scores(np.concatenate(scores, axis=1), np.concatenate(means, axis=2), self.reduce,
                                   self.empty_score)


# ------------------------------------------------------------------------------------------ registry

_PRESETS: dict[str, tuple[type[Strategy], dict[str, Any]]] = {
    "random": (RandomStrategy, {}),
    "fg-random": (ForegroundRandom, {}),
    "entropy": (Entropy, {}),
    "margin": (Margin, {}),
    "least-confidence": (LeastConfidence, {}),
    "bald": (BALD, {}),
    "coreset": (CoreSet, {}),
    "acft": (ACFT, {}),  # Entropy+Diversity^α with α = 1/4
    "acft-entropy": (ACFT, {"lambda1": 1.0, "lambda2": 0.0}),
    "acft-diversity": (ACFT, {"lambda1": 0.0, "lambda2": 1.0}),
}
_ALIASES = {"foreground-random": "fg-random", "least-conf": "least-confidence", "core-set": "coreset"}


def _normalise(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    return _ALIASES.get(key, key)


def available_strategies() -> list[str]:
    """Names accepted by :func:`get_strategy` (aliases: underscores for hyphens, ``foreground-random``,
    ``core-set``, ``least-conf``)."""
    return sorted(_PRESETS)


def get_strategy(name: str, **params: Any) -> Strategy:
    """Build a strategy by name; ``params`` override its dataclass fields (presets included).

    ``acft-entropy`` / ``acft-diversity`` are ACFT with (λ1, λ2) = (1, 0) / (0, 1); ``acft`` is (1, 1).
    Unknown names or parameters raise ``ValueError`` listing what is accepted.
    """
    key = _normalise(name)
    if key not in _PRESETS:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(available_strategies())}")
    cls, preset = _PRESETS[key]
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"strategy {key!r} has no parameter(s) {unknown}; accepted: {sorted(allowed)}")
    return cls(**{**preset, **params})
