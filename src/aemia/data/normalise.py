"""One intensity normaliser per modality, chosen by name and stored in the run (METHODS.md §1.1, §1.5, §8.4).

A normaliser is named by a spec string ``name`` or ``name:a,b`` (parameters), e.g. ``"ct-window:-175,250"``:

* ``ct-window:lo,hi`` clips HU to ``[lo, hi]`` and scales to [0, 1] (pointwise);
* ``mri-percentile[:lo,hi]`` per-channel percentile window to [0, 1] (default 0.5, 99.5; ``0,100`` is min-max);
* ``picture`` 8/16-bit pictures by their bit depth (unsigned integers / the type's maximum), bool as 0/1,
  float pictures taken as already in [0, 1], signed integers per-channel min-max;
* ``none`` float32, unchanged.

Constant images: the range-based normalisers (percentile, min-max) map a constant channel to 0; the pointwise ones
(HU window, bit depth) map every voxel by their formula. No normaliser returns NaN for finite input.
:func:`default_normaliser` is the rule a run gets when none is chosen (also for run folders from before
normalisers were recorded).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CT_WINDOW_GENESIS = (-1000.0, 1000.0)  # Models Genesis
CT_WINDOW_ABDOMEN = (-175.0, 250.0)  # CLIP-Driven Universal Model


def ct_window(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip HU to ``[lo, hi]`` and scale linearly to [0, 1], float32."""
    a = np.clip(np.asarray(array, dtype=np.float32), lo, hi)
    a = (a - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(a, 0.0, 1.0, out=a)


def percentile_window(array: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Per-channel percentile window to [0, 1] (channels first), float32; a constant channel becomes 0."""
    a = np.asarray(array, dtype=np.float32)
    out = np.zeros_like(a)
    for c in range(a.shape[0]):
        lo, hi = (np.float64(v) for v in np.percentile(a[c], [lo_pct, hi_pct]))
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            out[c] = np.clip((a[c] - lo) / (hi - lo), 0.0, 1.0)  # in float64, then stored as float32
    return np.clip(out, 0.0, 1.0, out=out)  # float32 rounding must not leave [0, 1]


def picture_scale(array: np.ndarray) -> np.ndarray:
    """8/16-bit pictures to [0, 1] by bit depth, float32 (see the module docstring for other types)."""
    a = np.asarray(array)
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.unsignedinteger):
        return a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
    if np.issubdtype(a.dtype, np.integer):
        return percentile_window(a, 0.0, 100.0)
    return a.astype(np.float32, copy=False)


def _unchanged(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


NORMALISERS: dict[str, Callable[..., np.ndarray]] = {
    "ct-window": ct_window,
    "mri-percentile": percentile_window,
    "picture": picture_scale,
    "none": _unchanged,
}


def parse(spec: str) -> tuple[Callable[..., np.ndarray], tuple[float, ...]]:
    """The normaliser function and its parameters for a spec string; ``ValueError`` names the known ones."""
    name, _, params = spec.partition(":")
    if name not in NORMALISERS:
        raise ValueError(f"unknown normaliser {spec!r}; known: {', '.join(NORMALISERS)}")
    try:
        args = tuple(float(p) for p in params.split(",")) if params else ()
    except ValueError:
        raise ValueError(f"normaliser {spec!r}: parameters must be numbers, e.g. 'ct-window:-175,250'") from None
    if name == "ct-window" and (len(args) != 2 or args[1] <= args[0]):
        raise ValueError(f"normaliser {spec!r} needs a window 'ct-window:lo,hi' with lo < hi")
    return NORMALISERS[name], args


def normalise(array: np.ndarray, spec: str) -> np.ndarray:
    """``array`` (channels first) normalised by the normaliser ``spec``, float32."""
    fn, args = parse(spec)
    return fn(array, *args)


def default_normaliser(modality: str, dims: int, window: list[float] | tuple[float, ...] | None = None) -> str:
    """The documented default: an explicit HU ``window`` → ``ct-window`` with it; 2D → ``picture``;
    CT → the abdominal window; MR → ``mri-percentile``; anything else ``none``."""
    m = modality.lower()
    if window:
        return f"ct-window:{float(window[0])},{float(window[1])}"
    if dims == 2:
        return "picture"
    if m.startswith("ct"):
        return "ct-window:{},{}".format(*CT_WINDOW_ABDOMEN)
    if m.startswith("mr"):
        return "mri-percentile"
    return "none"
