"""Resampling and resizing helpers (intensity normalisation lives in :mod:`aemia.data.normalise`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def resample_to_spacing(array: np.ndarray, spacing: Sequence[float], target: Sequence[float], order: int = 1) -> np.ndarray:
    """Resample a channels-first volume (C, *S) from ``spacing`` to ``target`` mm (order 1 linear, 0 nearest)."""

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
