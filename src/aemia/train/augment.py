"""Training augmentation through MONAI dictionary transforms, reproducible per sample.

The recipe (``AugmentConfig`` defaults) is the low-variance small-data recipe of aemia's training core:
random flips of every spatial axis, 90° rotations in the first plane (square inputs only, so batch shapes
stay equal), a random affine (rotation ±15°, scaling ±15%, probability 0.5), brightness (±0.1 std) and
contrast (×(1 ± 0.1)), gamma in [0.7, 1.5] with probability 0.3 (nnU-Net's ranges: rotation, scaling
0.7–1.4 and gamma 0.7–1.5, narrowed for 2D endoscopy where the field of view is fixed), and an optional 2D
elastic deformation (off by default: it costs more than the rest together and did not pay on Kvasir).

Reproducibility: :func:`augment` takes a ``numpy.random.Generator`` (``[seed, epoch, index]`` in the
datasets) and seeds every transform from it in a fixed order, **whether the transform is enabled or not**.
The same generator therefore gives the same spatial draws with intensity augmentation on or off, which the
MB-DCNN guided datasets rely on to transform an image and its guide identically.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from monai.transforms import (
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandStdShiftIntensityd,
)
from monai.utils import convert_to_numpy

_SEED_MAX = 2**31 - 1


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment` may do; every probability/range 0 disables that transform."""

    flip: bool = True
    rot90: bool = True
    rotate: float = 15.0  # max |angle| in degrees (2D in-plane; 3D about the first axis)
    scale: float = 0.15  # zoom in [1 - scale, 1 + scale]
    affine_prob: float = 0.5
    intensity: float = 0.1  # brightness (× std) and contrast (relative) range
    gamma: float = 0.3  # probability of a gamma in [0.7, 1.5]
    elastic: float = 0.0  # probability of a 2D elastic deformation
    rotate_all_axes: bool = False  # 3D: rotate about all three axes (±rotate each), not only the first
    elastic3d: float = 0.0  # probability of a 3D elastic deformation (drawn last, so other draws are unchanged)

    @classmethod
    def light(cls) -> "AugmentConfig":
        """Flips, 90° rotations and brightness/contrast only (the pre-wave-2 recipe)."""
        return cls(rotate=0.0, scale=0.0, gamma=0.0)

    def spatial_only(self) -> "AugmentConfig":
        """The same spatial draws with every intensity transform off (for masks and guides)."""
        return replace(self, intensity=0.0, gamma=0.0)


#: Named recipes (``RunConfig.augment``, ``aemia train --augment``): ``strong`` is the default small-data recipe,
#: ``light`` the pre-wave-2 one (flips, 90° turns, brightness/contrast), ``none`` trains on the images as they are.
AUGMENT_PRESETS: dict[str, AugmentConfig | None] = {
    "strong": AugmentConfig(),
    "light": AugmentConfig.light(),
    "none": None,
}


def augment_preset(name: str) -> AugmentConfig | None:
    """The :class:`AugmentConfig` of a named recipe (None: no augmentation); ValueError naming the choices."""
    if name not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
    return AUGMENT_PRESETS[name]


@functools.lru_cache(maxsize=32)
def _transforms(spatial: int, cfg: AugmentConfig, has_label: bool, square: bool) -> tuple[tuple[bool, object], ...]:
    """Every candidate transform as (enabled, transform), always in the same order (spatial ones first); built once
    per setting (each call re-seeds them, so sharing them between samples changes no draw)."""
    keys = ["image", "label"] if has_label else ["image"]
    modes = ["bilinear", "nearest"] if has_label else ["bilinear"]
    out: list[tuple[bool, object]] = []
    for ax in range(3):  # always three flip slots so 2D and 3D consume seeds alike
        out.append((cfg.flip and ax < spatial, RandFlipd(keys, prob=0.5, spatial_axis=ax)))
    out.append((cfg.rot90 and square, RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=(0, 1))))
    rad = math.radians(cfg.rotate)
    rotate_range = (rad,) if spatial == 2 else (rad, rad, rad) if cfg.rotate_all_axes else (rad, 0.0, 0.0)
    affine_on = cfg.affine_prob > 0 and (cfg.rotate > 0 or cfg.scale > 0)
    out.append((affine_on, RandAffined(keys, prob=cfg.affine_prob, rotate_range=rotate_range,
                                       scale_range=(cfg.scale,) * spatial, mode=modes, padding_mode="border")))
    out.append((cfg.elastic > 0 and spatial == 2,
                Rand2DElasticd(keys, spacing=(24, 24), magnitude_range=(1.0, 2.0), prob=cfg.elastic, mode=modes,
                               padding_mode="border")))
    out.append((cfg.intensity > 0, RandScaleIntensityd("image", factors=cfg.intensity, prob=1.0)))
    out.append((cfg.intensity > 0, RandStdShiftIntensityd("image", factors=cfg.intensity, prob=1.0)))
    out.append((cfg.gamma > 0, RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=cfg.gamma)))
    if cfg.elastic3d > 0 and spatial == 3:  # an extra slot only when used: every other recipe keeps its draws
        out.append((True, Rand3DElasticd(keys, sigma_range=(5.0, 8.0), magnitude_range=(50.0, 150.0),
                                         prob=cfg.elastic3d, mode=modes, padding_mode="border")))
    return tuple(out)


def augment(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator,
            cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply the same random spatial transform to ``image`` (C, *S) and ``label`` (*S); intensity to the image.

    Returns a float32 image and an int64 label (or None), both contiguous, in the input's shape."""
    spatial = image.ndim - 1
    square = image.shape[1] == image.shape[2]
    data: dict[str, object] = {"image": np.ascontiguousarray(image, dtype=np.float32)}
    if label is not None:
        data["label"] = np.ascontiguousarray(label, dtype=np.float32)[None]
    with torch.autocast("cpu", enabled=False):  # data may be drawn inside a training step's autocast
        for enabled, t in _transforms(spatial, cfg, label is not None, square):
            seed = int(rng.integers(_SEED_MAX))
            if enabled:
                t.set_random_state(seed=seed)  # type: ignore[attr-defined]
                data = t(data)  # type: ignore[operator]
    img = np.ascontiguousarray(convert_to_numpy(data["image"]), dtype=np.float32)
    lab = None
    if label is not None:
        lab = np.ascontiguousarray(np.rint(convert_to_numpy(data["label"])[0])).astype(np.int64)
    return img, lab
