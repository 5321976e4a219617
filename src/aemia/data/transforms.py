"""Intensity normalisation per modality (documented windows, METHODS.md §8.4) and resizing helpers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CT_WINDOW_GENESIS = (-1000.0, 1000.0)  # Models Genesis
CT_WINDOW_ABDOMEN = (-175.0, 250.0)  # CLIP-Driven Universal Model


def window(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip to [lo, hi] and scale to [0, 1] (CT in HU)."""
    return ((np.clip(array, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def percentile_scale(array: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Per-channel percentile window to [0, 1] (MRI, whose units are arbitrary)."""
    out = np.empty(array.shape, np.float32)
    for c in range(array.shape[0]):
        lo, hi = np.percentile(array[c], [lo_pct, hi_pct])
        out[c] = np.clip((array[c] - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return out


def normalise(array: np.ndarray, modality: str) -> np.ndarray:
    """CT → abdominal window to [0, 1]; MRI → per-channel percentile window; anything else unchanged."""
    m = modality.lower()
    if m.startswith("ct"):
        return window(array, *CT_WINDOW_ABDOMEN)
    if m.startswith("mr"):
        return percentile_scale(array)
    return array.astype(np.float32, copy=False)


def resample_to_spacing(array: np.ndarray, spacing: Sequence[float], target: Sequence[float], order: int = 1) -> np.ndarray:
    """Resample a channels-first volume (C, *S) from ``spacing`` to ``target`` mm (order 1 linear, 0 nearest)."""
    import torch
    import torch.nn.functional as F

    spacing = tuple(float(s) for s in spacing)
    target = tuple(float(t) for t in target)
    if np.allclose(spacing, target, rtol=1e-3):
        return array
    shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(array.shape[1:], spacing, target))
    return resize(array, shape, order)


def resize(array: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resize a channels-first array (C, *S) to spatial ``shape`` (order 1 (tri/bi)linear, 0 nearest)."""
    import torch
    import torch.nn.functional as F

    if tuple(array.shape[1:]) == tuple(shape):
        return array
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if order == 0:
        out = F.interpolate(x, size=tuple(shape), mode="nearest-exact")
        return out[0].numpy().astype(array.dtype)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    return F.interpolate(x, size=tuple(shape), mode=mode, align_corners=False)[0].numpy()
