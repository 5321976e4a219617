"""FROC: lesion sensitivity against false-positive components per case, over a confidence threshold.

Free-response ROC (Chakraborty, "Maximum likelihood analysis of free-response receiver operating characteristic
(FROC) data", Med. Phys. 16 (1989) 561): every predicted lesion (a connected component) carries a confidence.
At threshold ``t`` the components with confidence ≥ ``t`` are kept; a true lesion (a connected component of the
reference) is *detected* when a kept component overlaps it, and a kept component that overlaps no true lesion is
a *false positive*. The curve is (mean false positives per case, pooled sensitivity) for every threshold, from
the most confident component down. Matching is by overlap, as in :func:`aemia.evaluate.metrics.lesion_detection`
(full connectivity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class CaseCandidates:
    """One case's predicted lesions: ``confidence`` and ``false_positive`` per component, and for every true
    lesion the highest confidence among the components that overlap it (``-inf`` when none does)."""

    confidence: np.ndarray
    false_positive: np.ndarray
    lesion_best: np.ndarray


def case_candidates(components: np.ndarray, confidences: Sequence[float], truth: np.ndarray) -> CaseCandidates:
    """``components``: integer map of predicted components 1..n (0 background), ``confidences[i-1]`` the
    confidence of component ``i``; ``truth``: boolean mask of the true lesions."""
    comp = np.asarray(components)
    conf = np.asarray(confidences, dtype=float)
    n = len(conf)
    gt = np.asarray(truth, dtype=bool)
    gt_lab, n_gt = ndimage.label(gt, structure=ndimage.generate_binary_structure(gt.ndim, gt.ndim))
    touch = np.zeros(n, dtype=bool)
    best = np.full(n_gt, -np.inf)
    if n and n_gt:
        both = (comp > 0) & (gt_lab > 0)
        pairs = np.unique(np.stack([comp[both], gt_lab[both]], axis=1), axis=0)
        for c, g in pairs:
            touch[c - 1] = True
            best[g - 1] = max(best[g - 1], conf[c - 1])
    return CaseCandidates(conf, ~touch, best)


def froc(cases: Sequence[CaseCandidates]) -> list[tuple[float, float, float]]:
    """(threshold, false positives per case, sensitivity) for every distinct confidence, highest threshold
    first; sensitivity is pooled over all true lesions (NaN when there is none)."""
    if not cases:
        return []
    conf = np.concatenate([c.confidence for c in cases]) if cases else np.zeros(0)
    fp = np.concatenate([c.false_positive for c in cases])
    best = np.concatenate([c.lesion_best for c in cases])
    points = []
    for t in sorted(set(conf.tolist()), reverse=True):
        n_fp = int(((conf >= t) & fp).sum())
        sens = float((best >= t).mean()) if len(best) else float("nan")
        points.append((float(t), n_fp / len(cases), sens))
    return points


def sensitivity_at(points: Sequence[tuple[float, float, float]], fp_per_case: float) -> float:
    """The highest sensitivity on the curve with at most ``fp_per_case`` false positives per case (0 if none)."""
    ok = [s for _, f, s in points if f <= fp_per_case]
    return max(ok) if ok else 0.0
