"""Helpers for the evaluation tests: synthetic masks and writers (imported by test modules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ball(shape: tuple[int, ...], spacing: tuple[float, ...], radius_mm: float, centre_mm=None) -> np.ndarray:
    """Boolean disc/sphere of ``radius_mm`` in physical space, centred in the image by default."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    if centre_mm is None:
        centre_mm = [(n - 1) * s / 2 for n, s in zip(shape, spacing)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm**2


def random_blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2.5) > 0.5


def write_png_mask(path: Path, mask: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray((np.asarray(mask) != 0).astype(np.uint8) * 255).save(path)
    return path


def write_nifti_labels(path: Path, labels: np.ndarray, spacing: tuple[float, ...]) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))
    return path
