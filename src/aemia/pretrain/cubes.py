"""Training cubes / patches for Models Genesis pretraining (Zhou et al., MICCAI 2019; MedIA 2021).

Sub-volume extraction as in the original ``infinite_generator_3D.py`` (``../shared/reference/METHODS.md`` §1.1):

* **intensity**: CT is clipped to [-1000, 1000] HU and scaled linearly to [0, 1] (§1.1, §1.5); MRI uses a
  per-image, per-channel percentile window (§1.5 names [0, 4000] or per-image min-max, issue #36; percentiles
  (0.5, 99.5) are our choice, robust to single hot voxels, and (0, 100) is exactly min-max); 2D pictures are
  scaled to [0, 1] by bit depth (:mod:`aemia.data.normalise`);
* **cubes**: 64x64x32 in the paper (``PAPER_CUBES``), 32x32x16 on CPU (``CPU_CUBES``, §1.7); 32 cubes per volume,
  at most 50 tries per wanted cube; random start keeping a border of 100 voxels in x/y and 30 slices in z;
* **tissue filter** (CT only): a candidate is cropped with 3 extra slices; for every voxel of the cube the first
  k in {0, 1, 2} among the voxel and the next two slices with value >= normalised -150 HU (0.425) gives
  ``d = 1 - k / 2`` (no such slice: ``d = 0``); the cube is rejected when ``sum(d) > 0.15 * cube voxels`` and
  otherwise keeps its first 32 slices. This is the published chest-CT rule: it keeps cubes that are mostly lung
  or air and **rejects cubes that are mostly soft tissue** (e.g. most of an abdominal CT). For other body
  regions set ``max_tissue_fraction=None`` and, to skip empty air, ``min_tissue_fraction`` (e.g. 0.15).

Everything is vectorised except the loop over candidate positions (one numpy expression per candidate instead of
the original's 4-level per-voxel loop).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from aemia.data.image import Image
from aemia.data.normalise import ct_window, percentile_window, picture_scale
from aemia.errors import InputError

__all__ = [
    "CPU_CUBES",
    "PAPER_CUBES",
    "CubeBatch",
    "CubeConfig",
    "extract_cubes",
    "extract_patches_2d",
    "guess_modality",
    "normalize_image",
    "passes_tissue_filter",
    "tissue_fraction",
]

Modality = Literal["auto", "ct", "mri", "image"]


# ---------------------------------------------------------------------------------------------- intensity
def guess_modality(image: Image) -> str:
    """``"image"`` for 2D, ``"ct"`` for volumes with values below -500 (HU air), else ``"mri"``."""
    if image.spatial_dims == 2:
        return "image"
    return "ct" if image.array.size and float(np.min(image.array)) < -500.0 else "mri"


def normalize_image(image: Image, modality: Modality = "auto", hu_window: tuple[float, float] = (-1000.0, 1000.0),
                    mri_percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """The image's voxels in [0, 1] (float32, channels-first) by modality (METHODS §1.1 / §1.5), with the
    normalisers of :mod:`aemia.data.normalise`."""
    mod = guess_modality(image) if modality == "auto" else modality
    if mod == "ct":
        return ct_window(image.array, *hu_window)
    if mod == "mri":
        return percentile_window(image.array, *mri_percentiles)
    if mod == "image":
        return picture_scale(image.array)
    raise ValueError(f"unknown modality {modality!r}; use 'auto', 'ct', 'mri' or 'image'")


# ------------------------------------------------------------------------------------------- tissue filter
def tissue_fraction(window: np.ndarray, depth: int, threshold: float = 0.425, look_ahead: int = 3) -> float:
    """The published tissue score ``sum(d) / cube voxels`` of a (X, Y, depth + look_ahead) window (METHODS §1.1).

    ``window`` is one channel in [0, 1] with at least ``depth + look_ahead - 1`` slices; ``threshold`` is
    -150 HU normalised by the [-1000, 1000] window. For each cube voxel (first ``depth`` slices), k is the first
    offset in ``0 .. look_ahead - 1`` at which the value is >= threshold (none: ``look_ahead - 1``) and
    ``d = 1 - k / (look_ahead - 1)``.
    """
    if window.ndim != 3 or window.shape[2] < depth + look_ahead - 1:
        raise ValueError(f"window {window.shape} needs 3 axes and >= {depth + look_ahead - 1} slices")
    if look_ahead < 2:
        return float(np.mean(window[:, :, :depth] >= threshold))
    hit = window >= threshold
    found = np.zeros(window.shape[:2] + (depth,), dtype=bool)
    score = 0.0
    for k in range(look_ahead - 1):  # the last offset scores 0 either way
        first = hit[:, :, k:k + depth] & ~found
        score += (1.0 - k / (look_ahead - 1)) * int(np.count_nonzero(first))
        found |= first
    return score / float(window.shape[0] * window.shape[1] * depth)


def passes_tissue_filter(window: np.ndarray, depth: int, threshold: float = 0.425, look_ahead: int = 3,
                         max_fraction: float | None = 0.15, min_fraction: float = 0.0) -> bool:
    """Keep a candidate when ``min_fraction <= tissue_fraction <= max_fraction`` (paper: max 0.15, min 0)."""
    f = tissue_fraction(window, depth, threshold, look_ahead)
    return f >= min_fraction and (max_fraction is None or f <= max_fraction)


# ----------------------------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class CubeConfig:
    """Sub-volume extraction settings; defaults are the paper's (METHODS §1.1 ``infinite_generator_3D.py``).

    ``size`` cube (x, y, z) in voxels; ``cubes_per_volume`` the original ``scale`` (32); ``tries_per_cube`` 50
    (at most 50 * N candidates per volume); ``border`` voxels kept free at each side (100, 100, 30) - on a
    volume too small for it the border shrinks to a quarter of the free range (unchanged on LUNA-sized CTs);
    ``pad`` pads axes shorter than the crop with 0 (air / background after normalisation), centred.
    Tissue filter (CT only, METHODS §1.1): ``tissue_threshold_hu`` -150, ``tissue_look_ahead`` 3 slices,
    ``max_tissue_fraction`` 0.15 (``lung_max``; None disables), ``min_tissue_fraction`` 0 (our extension to
    reject empty air, off in the paper). ``hu_window`` [-1000, 1000]; ``mri_percentiles`` (0.5, 99.5).
    """

    size: tuple[int, int, int] = (64, 64, 32)
    cubes_per_volume: int = 32
    tries_per_cube: int = 50
    border: tuple[int, int, int] = (100, 100, 30)
    pad: bool = True
    tissue_filter: bool = True
    tissue_threshold_hu: float = -150.0
    tissue_look_ahead: int = 3
    max_tissue_fraction: float | None = 0.15
    min_tissue_fraction: float = 0.0
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    mri_percentiles: tuple[float, float] = (0.5, 99.5)

    @property
    def tissue_threshold(self) -> float:
        """The HU threshold in normalised [0, 1] units (-150 HU -> 0.425)."""
        lo, hi = self.hu_window
        return (self.tissue_threshold_hu - lo) / (hi - lo)

    def tissue_rich(self, min_fraction: float = 0.15) -> "CubeConfig":
        """The filter turned around for non-chest CT (our extension, not in the paper): no upper limit, reject
        cubes with a tissue score below ``min_fraction`` (mostly air). The published chest rule rejects every
        cube of an abdominal CT (scores 0.6-1.0 on the TotalSegmentator example)."""
        return replace(self, max_tissue_fraction=None, min_tissue_fraction=min_fraction)


PAPER_CUBES = CubeConfig()
"""64x64x32, borders (100, 100, 30), 32 cubes per volume (METHODS §1.1)."""

CPU_CUBES = replace(PAPER_CUBES, size=(32, 32, 16), border=(50, 50, 15))
"""32x32x16 with halved borders: the 2-CPU-core preset (METHODS §1.7)."""


@dataclass
class CubeBatch:
    """Extracted cubes ``array`` (N, C, X, Y, Z) float32 in [0, 1] with their ``origins`` (N, 3) in the
    (possibly padded) volume, the number of candidates ``tries`` and of those ``rejected`` by the filter."""

    array: np.ndarray
    origins: np.ndarray
    tries: int
    rejected: int
    modality: str


def _pad_to(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Pad the spatial axes of channels-first ``a`` with zeros (centred) up to at least ``shape``."""
    pads = [(0, 0)]
    for dim, want in zip(a.shape[1:], shape):
        extra = max(0, want - dim)
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(a, pads) if any(p != (0, 0) for p in pads) else a


def _start_range(dim: int, crop: int, border: int) -> tuple[int, int]:
    """Inclusive start range: the original's ``randint(b, dim - crop - 1 - b)``; empty (hi < lo) if dim < crop.

    An exact fit (dim == crop, e.g. after padding) gives start 0; a border that leaves no room shrinks to a
    quarter of the free range.
    """
    if dim < crop:
        return 0, -1
    last = max(0, dim - crop - 1)
    b = border if last - 2 * border >= 0 else last // 4
    return b, last - b


def extract_cubes(image: Image, rng: np.random.Generator, config: CubeConfig = PAPER_CUBES,
                  modality: Modality = "auto") -> CubeBatch:
    """Random training cubes from one 3D image (METHODS §1.1).

    The image is normalised (:func:`normalize_image`), padded if smaller than the crop, and candidates are drawn
    (x, y, z start; one ``rng.integers`` call each) until ``cubes_per_volume`` pass the tissue filter (CT only)
    or ``tries_per_cube * cubes_per_volume`` candidates were tried. May return fewer cubes, even none.
    """
    if image.spatial_dims != 3:
        raise InputError(image.path, f"extract_cubes needs a 3D image, got {image.spatial_dims}D "
                                     "(use extract_patches_2d)")
    mod = guess_modality(image) if modality == "auto" else modality
    vol = normalize_image(image, mod, config.hu_window, config.mri_percentiles)
    use_filter = config.tissue_filter and mod == "ct"
    look = config.tissue_look_ahead if use_filter else 0
    crop = (config.size[0], config.size[1], config.size[2] + look)
    if config.pad:
        vol = _pad_to(vol, crop)
    ranges = [_start_range(d, c, b) for d, c, b in zip(vol.shape[1:], crop, config.border)]
    if any(hi < lo for lo, hi in ranges):
        raise InputError(image.path, f"image {image.spatial_shape} is smaller than the crop {crop} "
                                     "(set pad=True)")
    want, max_tries = config.cubes_per_volume, config.tries_per_cube * config.cubes_per_volume
    cubes: list[np.ndarray] = []
    origins: list[tuple[int, int, int]] = []
    tries = rejected = 0
    sx, sy, sz = config.size
    while len(cubes) < want and tries < max_tries:
        tries += 1
        x0, y0, z0 = (int(rng.integers(lo, hi + 1)) for lo, hi in ranges)
        window = vol[:, x0:x0 + crop[0], y0:y0 + crop[1], z0:z0 + crop[2]]
        if use_filter and not passes_tissue_filter(
                window[0], sz, config.tissue_threshold, config.tissue_look_ahead,
                config.max_tissue_fraction, config.min_tissue_fraction):
            rejected += 1
            continue
        cubes.append(np.ascontiguousarray(window[:, :, :, :sz]))
        origins.append((x0, y0, z0))
    array = np.stack(cubes) if cubes else np.zeros((0, vol.shape[0], sx, sy, sz), np.float32)
    return CubeBatch(array=array, origins=np.asarray(origins, dtype=np.int64).reshape(-1, 3), tries=tries,
                     rejected=rejected, modality=mod)


def extract_patches_2d(image: Image, rng: np.random.Generator, size: tuple[int, int] = (64, 64), n: int = 32,
                       modality: Modality = "auto") -> np.ndarray:
    """``n`` random ``size`` crops (N, C, H, W) float32 in [0, 1] from a 2D image (padded if smaller).

    The 2D counterpart of :func:`extract_cubes` for Models Genesis 2D; no tissue filter (it is CT-specific).
    """
    if image.spatial_dims != 2:
        raise InputError(image.path, f"extract_patches_2d needs a 2D image, got {image.spatial_dims}D")
    img = _pad_to(normalize_image(image, modality), size)
    h0 = rng.integers(0, img.shape[1] - size[0] + 1, size=n)
    w0 = rng.integers(0, img.shape[2] - size[1] + 1, size=n)
    return np.stack([img[:, a:a + size[0], b:b + size[1]] for a, b in zip(h0, w0)]).astype(np.float32, copy=False)
