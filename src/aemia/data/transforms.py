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


def pad_to_multiple(shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    return tuple(int(-(-s // multiple) * multiple) for s in shape)
