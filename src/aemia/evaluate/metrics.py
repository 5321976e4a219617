"""Segmentation, lesion-detection and classification metrics, and bootstrap confidence intervals.

Conventions (all documented once here and relied on by the summaries):

* Masks are boolean-able arrays of identical shape, 2D ``(H, W)`` or 3D ``(X, Y, Z)``; nonzero is foreground.
* ``spacing`` is the voxel size in mm per axis; distances are reported in mm.
* Empty masks: both empty → dice = iou = nsd = 1 and hd95 = 0 (perfect agreement that nothing is there);
  exactly one empty → dice = iou = nsd = 0 and :func:`hd95` returns ``inf`` (no surface to measure to).
  :func:`segmentation_case_metrics` replaces that ``inf`` by the image diagonal in mm (the largest distance
  possible inside the image, as many challenges do) and sets ``hd95_worst_case = 1.0`` so summaries stay
  finite and the substitution stays visible.
* Surfaces are foreground voxels with at least one face-neighbour outside the mask (voxels on the image
  border count as surface), as in MONAI's ``get_mask_edges``; surface distances use
  ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

DEFAULT_SIZE_BINS_MM: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, math.inf)


# --------------------------------------------------------------------------------------- overlap


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred) != 0, np.asarray(gt) != 0
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    return pred, gt


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|P∩G| / (|P|+|G|); 1.0 if both masks are empty, 0.0 if exactly one is."""
    pred, gt = _pair(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / total


def mean_class_dice(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> float:
    """Mean :func:`dice` over the foreground classes 1..n_classes-1 of two label maps (a class empty in both
    counts 1.0): the per-case validation score of a multi-class segmentation."""
    return float(np.mean([dice(pred == c, gt == c) for c in range(1, max(n_classes, 2))]))


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union |P∩G| / |P∪G|; 1.0 if both masks are empty, 0.0 if exactly one is."""
    pred, gt = _pair(pred, gt)
    union = int(np.logical_or(pred, gt).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, gt).sum()) / union


# -------------------------------------------------------------------------------------- surfaces


def _spacing(spacing: Sequence[float] | float | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        return (float(spacing),) * ndim  # type: ignore[arg-type]
    sp = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    if len(sp) != ndim:
        raise ValueError(f"spacing {sp} has {len(sp)} values for a {ndim}D mask")
    return sp


def surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a face-neighbour outside the mask (image border counts as outside)."""
    mask = np.asarray(mask) != 0
    return mask & ~ndimage.binary_erosion(mask)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each pred surface voxel to the gt surface, and from each gt surface voxel to pred's.

    Both masks must be non-empty. Work is restricted to the bounding box of ``pred | gt`` (plus one voxel):
    Euclidean distances between surface voxels do not depend on the rest of the image.
    """
    pred, gt = _pair(pred, gt)
    sp = _spacing(spacing, pred.ndim)
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks")
    coords = np.argwhere(pred | gt)
    lo = np.maximum(coords.min(axis=0) - 1, 0)
    hi = np.minimum(coords.max(axis=0) + 2, pred.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    # Cropping does not change the surfaces: a box edge is either the image border (outside either way) or
    # a row of background voxels kept by the one-voxel margin.
    s_pred, s_gt = surface(pred[box]), surface(gt[box])
    dist_to_gt = ndimage.distance_transform_edt(~s_gt, sampling=sp)
    dist_to_pred = ndimage.distance_transform_edt(~s_pred, sampling=sp)
    return dist_to_gt[s_pred], dist_to_pred[s_gt]


def _hd_from_distances(d_pg: np.ndarray, d_gp: np.ndarray, percentile: float) -> float:
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def _nsd_from_distances(d_pg: np.ndarray, d_gp: np.ndarray, tolerance_mm: float) -> float:
    within = int((d_pg <= tolerance_mm).sum()) + int((d_gp <= tolerance_mm).sum())
    return within / (d_pg.size + d_gp.size)


def hd95(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None, percentile: float = 95.0
) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm.

    max(P95 of pred-surface→gt-surface distances, P95 of gt-surface→pred-surface distances), the definition
    MONAI's ``compute_hausdorff_distance(percentile=95)`` uses (linear-interpolated percentiles).
    Both empty → 0.0; exactly one empty → ``math.inf`` (see module docstring for how summaries handle it).
    """
    pred, gt = _pair(pred, gt)
    if not pred.any() and not gt.any():
        return 0.0
    if not pred.any() or not gt.any():
        return math.inf
    return _hd_from_distances(*surface_distances(pred, gt, spacing), percentile)


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None, tolerance_mm: float = 1.0) -> float:
    """Normalised surface Dice: share of both surfaces lying within ``tolerance_mm`` of the other surface.

    (#pred-surface voxels within τ of gt surface + #gt-surface voxels within τ of pred surface) /
    (#pred-surface + #gt-surface), counting voxels (MONAI ``compute_surface_dice`` without sub-voxels).
    Both empty → 1.0; exactly one empty → 0.0.
    """
    pred, gt = _pair(pred, gt)
    if not pred.any() and not gt.any():
        return 1.0
    if not pred.any() or not gt.any():
        return 0.0
    return _nsd_from_distances(*surface_distances(pred, gt, spacing), tolerance_mm)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float] | float | None = None) -> float:
    """Length in mm of the image diagonal, the worst-case HD95 used when exactly one mask is empty."""
    sp = _spacing(spacing, len(shape))
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, sp))))


def binary_case_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | float | None = None, nsd_tolerance_mm: float = 1.0
) -> dict[str, float]:
    """dice, iou, hd95 (mm, worst case = image diagonal), nsd and the ``hd95_worst_case`` flag (0/1)."""
    pred, gt = _pair(pred, gt)
    out = {"dice": dice(pred, gt), "iou": iou(pred, gt)}
    if pred.any() and gt.any():
        d_pg, d_gp = surface_distances(pred, gt, spacing)
        out["hd95"] = _hd_from_distances(d_pg, d_gp, 95.0)
        out["nsd"] = _nsd_from_distances(d_pg, d_gp, nsd_tolerance_mm)
        out["hd95_worst_case"] = 0.0
    elif not pred.any() and not gt.any():
        out.update(hd95=0.0, nsd=1.0, hd95_worst_case=0.0)
    else:
        out.update(hd95=image_diagonal_mm(pred.shape, spacing), nsd=0.0, hd95_worst_case=1.0)
    return out


def segmentation_case_metrics(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    spacing: Sequence[float] | float | None,
    classes: dict[int, str],
    nsd_tolerance_mm: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Per-class (one-vs-rest) :func:`binary_case_metrics` for integer label maps: ``{class_name: {metric: value}}``."""
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"prediction shape {pred_labels.shape} differs from ground-truth shape {gt_labels.shape}")
    return {
        name: binary_case_metrics(pred_labels == label, gt_labels == label, spacing, nsd_tolerance_mm)
        for label, name in classes.items()
    }


# ------------------------------------------------------------------------------ lesion detection


def equivalent_diameter_mm(volume_mm: float, ndim: int) -> float:
    """Diameter of the n-ball with the given volume (area in 2D: circle; volume in 3D: sphere)."""
    unit_ball = math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1)
    return 2.0 * (volume_mm / unit_ball) ** (1.0 / ndim)


def size_bin_labels(size_bins_mm: Sequence[float]) -> list[str]:
    """Human-readable labels ``"0-5 mm"``, ..., ``">=20 mm"`` for consecutive bin edges."""
    edges = list(size_bins_mm)
    labels = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        labels.append(f">={lo:g} mm" if math.isinf(hi) else f"{lo:g}-{hi:g} mm")
    return labels


def lesion_detection(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | float | None = None,
    size_bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM,
) -> dict[str, Any]:
    """Lesion-wise detection for one case.

    Lesions are connected components of the gt foreground (full connectivity: 8 in 2D, 26 in 3D). A lesion
    counts as detected when at least one predicted foreground voxel overlaps it (equivalently IoU > 0).
    Its size is the equivalent diameter in mm (circle in 2D, sphere in 3D) of its area/volume; lesions
    fall in bin ``[lo, hi)``. False positives are predicted components (same connectivity) that touch no
    gt voxel. Sensitivity of an empty bin is NaN.

    Returns ``{"n_lesions", "n_detected", "sensitivity", "false_positives", "lesions": [{"diameter_mm",
    "volume_mm", "detected"}], "bins": [{"label", "lo_mm", "hi_mm", "n_lesions", "n_detected",
    "sensitivity"}]}``.
    """
    pred, gt = _pair(pred, gt)
    sp = _spacing(spacing, gt.ndim)
    structure = ndimage.generate_binary_structure(gt.ndim, gt.ndim)
    gt_lab, n_gt = ndimage.label(gt, structure=structure)
    pred_lab, n_pred = ndimage.label(pred, structure=structure)

    sizes = np.bincount(gt_lab.ravel(), minlength=n_gt + 1)[1:]
    hits = np.bincount(gt_lab[pred].ravel(), minlength=n_gt + 1)[1:]
    fp_touch = np.bincount(pred_lab[gt].ravel(), minlength=n_pred + 1)[1:]
    voxel_mm = float(np.prod(sp))
    diam = [equivalent_diameter_mm(float(s) * voxel_mm, gt.ndim) for s in sizes]
    detected = hits > 0

    edges = list(size_bins_mm)
    bins = []
    for label, lo, hi in zip(size_bin_labels(edges), edges[:-1], edges[1:]):
        in_bin = np.array([lo <= d < hi for d in diam], dtype=bool)
        n, k = int(in_bin.sum()), int((in_bin & detected).sum())
        bins.append({"label": label, "lo_mm": lo, "hi_mm": hi, "n_lesions": n, "n_detected": k,
                     "sensitivity": k / n if n else math.nan})
    return {
        "n_lesions": int(n_gt),
        "n_detected": int(detected.sum()),
        "sensitivity": float(detected.mean()) if n_gt else math.nan,
        "false_positives": int((fp_touch == 0).sum()),
        "lesions": [
            {"diameter_mm": d, "volume_mm": float(s) * voxel_mm, "detected": bool(h)}
            for d, s, h in zip(diam, sizes, detected)
        ],
        "bins": bins,
    }


# -------------------------------------------------------------------------------- classification


def _binary_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos = y.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative case")
    ranks = rankdata(s)  # average ranks for ties → ties count 1/2 (Mann–Whitney U)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic (ties count one half).

    Binary: ``y_true`` in {0, 1} (nonzero = positive), ``scores`` shape ``(n,)``.
    Multi-class: ``scores`` shape ``(n, K)`` of class probabilities and ``y_true`` in 0..K-1 → macro average
    of one-vs-rest AUCs over the classes that have both positives and negatives in ``y_true``.
    Raises ``ValueError`` when no AUC is defined (a single class present).
    """
    y, s = np.asarray(y_true), np.asarray(scores, dtype=float)
    if s.ndim == 1:
        if y.shape != s.shape:
            raise ValueError(f"y_true shape {y.shape} differs from scores shape {s.shape}")
        return _binary_auc(y != 0, s)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores must be (n,) or (n, K) with n = len(y_true); got {s.shape}")
    per_class = [_binary_auc(y == k, s[:, k]) for k in range(s.shape[1]) if 0 < (y == k).sum() < y.size]
    if not per_class:
        raise ValueError("AUC needs at least two classes in y_true")
    return float(np.mean(per_class))


def sensitivity_specificity(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, positive: int = 1
) -> tuple[float, float]:
    """(TP/(TP+FN), TN/(TN+FP)) for the ``positive`` label; NaN when there are no positives / negatives."""
    y, p = np.asarray(y_true) == positive, np.asarray(y_pred) == positive
    tp, fn = int((y & p).sum()), int((y & ~p).sum())
    tn, fp = int((~y & ~p).sum()), int((~y & p).sum())
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    return sens, spec


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Share of exactly matching labels (NaN for no cases)."""
    y, p = np.asarray(y_true), np.asarray(y_pred)
    return float((y == p).mean()) if y.size else math.nan


# ------------------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapCI:
    """Point estimate with percentile-bootstrap interval; unpacks as ``point, lo, hi``.

    ``n`` is the number of cases used; ``n_excluded`` the non-finite values dropped (:func:`bootstrap_ci`)
    or the resamples skipped for having a single class (:func:`bootstrap_metric_ci`).
    """

    point: float
    lo: float
    hi: float
    n: int
    n_excluded: int = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter((self.point, self.lo, self.hi))


def _resample_stats(values: np.ndarray, statistic: Callable[..., Any], idx: np.ndarray) -> np.ndarray:
    try:  # vectorised over resamples for numpy reductions (mean, median, ...)
        out = np.asarray(statistic(values[idx], axis=1), dtype=float)
        if out.shape == (idx.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(statistic(values[row])) for row in idx])


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    statistic: Callable[..., Any] = np.mean,
) -> BootstrapCI:
    """Case-level percentile bootstrap of ``statistic`` with a ``1 - alpha`` interval.

    Non-finite values (NaN, ±inf) are dropped and counted in ``n_excluded``. No cases → all NaN; one case →
    a zero-width interval. Resampling is vectorised (``statistic(x, axis=1)``) in chunks of bounded memory.
    """
    arr = np.asarray(values, dtype=float).ravel()
    finite = arr[np.isfinite(arr)]
    n, excluded = finite.size, arr.size - finite.size
    if n == 0:
        return BootstrapCI(math.nan, math.nan, math.nan, 0, excluded)
    point = float(statistic(finite))
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)
    stats = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        stats.append(_resample_stats(finite, statistic, idx))
    boot = np.concatenate(stats)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(point, float(lo), float(hi), n, excluded)


def bootstrap_metric_ci(
    y_true: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float] = auc,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapCI:
    """Percentile bootstrap of a dataset-level metric (e.g. :func:`auc`) by resampling cases.

    Resamples containing a single class are skipped and counted in ``n_excluded``.
    """
    y, s = np.asarray(y_true), np.asarray(scores)
    n = y.shape[0]
    point = float(metric_fn(y, s))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    ok = np.array([np.unique(y[row]).size > 1 for row in idx], dtype=bool)
    boot = np.array([metric_fn(y[row], s[row]) for row in idx[ok]], dtype=float)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return BootstrapCI(point, math.nan, math.nan, n, int((~ok).sum()))
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(point, float(lo), float(hi), n, int((~ok).sum()))


def seed_mean_metric_ci(
    y_true: Sequence[int] | np.ndarray,
    scores_per_seed: Sequence[np.ndarray],
    metric_fn: Callable[[np.ndarray, np.ndarray], float] = auc,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    minus: Sequence[np.ndarray] | None = None,
) -> BootstrapCI:
    """The mean over training seeds of a dataset-level metric, with a test-case bootstrap interval.

    ``scores_per_seed`` holds one score array per seed (``(n,)`` or ``(n, K)``, the same test cases in the same
    order); each resample of cases scores every seed on it and averages, so the interval covers test-set
    sampling of the seed mean. With ``minus`` (another model's per-seed scores on the same cases) the statistic
    is the paired difference of the two seed means. A resample where the metric is undefined (``ValueError``,
    e.g. a class missing) counts as non-finite and is dropped; single-class resamples are skipped and counted
    in ``n_excluded`` (:func:`bootstrap_metric_ci`, whose resamples these are).
    """
    first = [np.asarray(s) for s in scores_per_seed]
    second = [np.asarray(s) for s in (minus or [])]
    k = len(first)
    if k == 0:
        raise ValueError("seed_mean_metric_ci needs the scores of at least one seed")

    def seed_mean(y: np.ndarray, s: np.ndarray) -> float:
        try:
            value = float(np.mean([metric_fn(y, s[..., j]) for j in range(k)]))
            if second:
                value -= float(np.mean([metric_fn(y, s[..., j]) for j in range(k, s.shape[-1])]))
        except ValueError:
            return math.nan
        return value

    return bootstrap_metric_ci(y_true, np.stack(first + second, axis=-1), seed_mean, n_resamples=n_resamples,
                               seed=seed, alpha=alpha)


def bootstrap_ratio_ci(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapCI:
    """Pooled ratio sum(num)/sum(den) (e.g. lesions detected / lesions) with a case-resampling interval.

    Resamples whose denominator sums to zero are skipped (counted in ``n_excluded``).
    """
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    n = num.size
    if n == 0 or den.sum() == 0:
        return BootstrapCI(math.nan, math.nan, math.nan, n, 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    d = den[idx].sum(axis=1)
    ok = d > 0
    boot = num[idx].sum(axis=1)[ok] / d[ok]
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(float(num.sum() / den.sum()), float(lo), float(hi), n, int((~ok).sum()))


def ci_dict(ci: BootstrapCI) -> dict[str, Any]:
    """JSON form of a :class:`BootstrapCI`: ``{"mean", "ci": [lo, hi], "n", "n_excluded"}``."""
    return {"mean": ci.point, "ci": [ci.lo, ci.hi], "n": ci.n, "n_excluded": ci.n_excluded}


def summarise(
    per_case: list[dict[str, dict[str, float]]],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean and bootstrap CI of every metric over cases: ``{class: {metric: {"mean", "ci", "n", "n_excluded"}}}``.

    ``per_case`` holds one :func:`segmentation_case_metrics` result per case; a class or metric missing from
    a case, and non-finite values, do not count towards ``n`` (non-finite ones are counted in ``n_excluded``).
    """
    collected: dict[str, dict[str, list[float]]] = {}
    for case in per_case:
        for cls, metrics in case.items():
            if not isinstance(metrics, dict):
                continue
            for name, value in metrics.items():
                collected.setdefault(cls, {}).setdefault(name, []).append(float(value))
    return {
        cls: {name: ci_dict(bootstrap_ci(vals, n_resamples, seed, alpha)) for name, vals in metrics.items()}
        for cls, metrics in collected.items()
    }
