"""The two views of DiRA / CAiD pretraining: MoCo-v2 augmentations and the context distortions.

Facts from ``../shared/reference/METHODS.md`` §6.2 (read from DiRA's ``transformation.py`` and
``main_DiRA_moco.py``; CAiD uses the same code, §6.3):

* **views** (MoCo-v2): RandomResizedCrop(scale 0.2–1, aspect 3/4–4/3) → ColorJitter(0.4, 0.4, 0.4, 0.1) with
  p 0.8 (the four adjustments in random order) → Gaussian blur σ ∈ [0.1, 2] with p 0.5 → horizontal flip p 0.5;
* **context distortion** of each view, r ~ U(0, 1): r ≤ 0.3 zero up to 10 blocks of 10–70 px (after each block,
  stop with p 0.1); 0.3 < r ≤ 0.35 zero the image and paste back up to 10 windows of side 224 − U(50, 70) (same
  stopping rule); 0.35 < r ≤ 0.65 swap 10 pairs of 10–15 px blocks; otherwise nothing;
* **restoration target**: the grayscale crop of view 1 *before* its appearance augmentation.

Pixel sizes (crop blocks, windows, blur σ) are the paper's at 224 px, scaled by ``size / 224``. The flip is
treated as part of the crop (spatial), so the target is flipped with its view: a flip cannot be restored.
Everything draws from one :class:`numpy.random.Generator`: the same seed gives the same views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from aemia.train.data import EpochDataset, sample_rng

PAPER_SIZE = 224  # the published pixel sizes refer to 224 px crops


@dataclass(frozen=True)
class ViewConfig:
    crop_scale: tuple[float, float] = (0.2, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5
    flip_p: float = 0.5


def random_resized_crop(x: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.2, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """A random box of ``scale`` × the area and log-uniform aspect ``ratio`` (10 tries, else the whole image),
    resized back to the input size (bilinear)."""
    _, h, w = x.shape
    box = (0, 0, h, w)
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        bw, bh = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < bw <= w and 0 < bh <= h:
            box = (int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw)
            break
    i, j, bh, bw = box
    crop = torch.from_numpy(np.ascontiguousarray(x[:, i:i + bh, j:j + bw], np.float32))[None]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0].numpy()


def grayscale(x: np.ndarray) -> np.ndarray:
    """(1, H, W): ITU-R 601 luma of an RGB image; a 1-channel image is returned as it is."""
    if x.shape[0] == 1:
        return x.astype(np.float32, copy=True)
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None].astype(np.float32)


def color_jitter(x: np.ndarray, rng: np.random.Generator, strength: tuple[float, float, float, float]) -> np.ndarray:
    """Brightness, contrast, saturation (factors U(1 − s, 1 + s)) and hue (a chroma rotation by 2π·U(−h, h) in
    YIQ) in a random order; saturation and hue only for RGB. Values are clipped to [0, 1] after each step."""
    b, c, s, h = strength
    out = x.astype(np.float32, copy=True)
    for op in rng.permutation(4):
        if op == 0:
            out = out * rng.uniform(1 - b, 1 + b)
        elif op == 1:
            mean = float(grayscale(out).mean())
            out = mean + rng.uniform(1 - c, 1 + c) * (out - mean)
        elif op == 2 and out.shape[0] == 3:
            g = grayscale(out)
            out = g + rng.uniform(1 - s, 1 + s) * (out - g)
        elif op == 3 and out.shape[0] == 3:
            out = _rotate_hue(out, 2 * np.pi * rng.uniform(-h, h))
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)


def _rotate_hue(x: np.ndarray, angle: float) -> np.ndarray:
    yiq = np.tensordot(_YIQ, x, axes=1)
    cos, sin = np.cos(angle), np.sin(angle)
    i, q = yiq[1] * cos - yiq[2] * sin, yiq[1] * sin + yiq[2] * cos
    return np.tensordot(np.linalg.inv(_YIQ), np.stack([yiq[0], i, q]), axes=1)


def appearance(x: np.ndarray, rng: np.random.Generator, cfg: ViewConfig, scale: float = 1.0) -> np.ndarray:
    """MoCo-v2's appearance augmentations: colour jitter (p 0.8), then Gaussian blur (p 0.5, σ × ``scale``)."""
    if rng.random() < cfg.jitter_p:
        x = color_jitter(x, rng, cfg.jitter)
    if rng.random() < cfg.blur_p:
        sigma = rng.uniform(*cfg.blur_sigma) * scale
        x = np.stack([ndimage.gaussian_filter(ch, sigma) for ch in x]).astype(np.float32)
    return x


def _block(rng: np.random.Generator, shape: tuple[int, int], lo: int, hi: int, scale: float) -> tuple[int, int, int, int]:
    """A block of side U{lo..hi}·scale (each axis) at a uniform position: (row, col, height, width)."""
    bh, bw = (max(1, min(n, int(round(rng.integers(lo, hi + 1) * scale)))) for n in shape)
    return int(rng.integers(0, shape[0] - bh + 1)), int(rng.integers(0, shape[1] - bw + 1)), bh, bw


def context_distortion(x: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> tuple[np.ndarray, str]:
    """DiRA's ``Custom_Distortion`` (see the module docstring); returns the distorted copy and its kind
    (``inpaint``, ``outpaint``, ``swap`` or ``none``)."""
    out = x.astype(np.float32, copy=True)
    shape = x.shape[1:]
    r = rng.random()
    if r <= 0.3:
        for _ in range(10):
            i, j, bh, bw = _block(rng, shape, 10, 70, scale)
            out[:, i:i + bh, j:j + bw] = 0.0
            if rng.random() < 0.1:
                break
        return out, "inpaint"
    if r <= 0.35:
        out[:] = 0.0
        for _ in range(10):
            side = [max(1, n - int(round(rng.integers(50, 71) * scale))) for n in shape]
            i, j = int(rng.integers(0, shape[0] - side[0] + 1)), int(rng.integers(0, shape[1] - side[1] + 1))
            out[:, i:i + side[0], j:j + side[1]] = x[:, i:i + side[0], j:j + side[1]]
            if rng.random() < 0.1:
                break
        return out, "outpaint"
    if r <= 0.65:
        for _ in range(10):
            side = max(1, int(round(rng.integers(10, 16) * scale)))
            (i1, j1), (i2, j2) = ((int(rng.integers(0, n - side + 1)) for n in shape) for _ in range(2))
            a = out[:, i1:i1 + side, j1:j1 + side].copy()
            out[:, i1:i1 + side, j1:j1 + side] = out[:, i2:i2 + side, j2:j2 + side]
            out[:, i2:i2 + side, j2:j2 + side] = a
        return out, "swap"
    return out, "none"


def make_views(image: np.ndarray, rng: np.random.Generator, cfg: ViewConfig = ViewConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query input, key input, restoration target) from one (C, H, W) image in [0, 1].

    Draw order: crop + flip of view 1, crop + flip of view 2, appearance of view 1, of view 2, distortion of
    view 1, of view 2."""
    scale = image.shape[-1] / PAPER_SIZE
    crops = []
    for _ in range(2):
        c = random_resized_crop(image, rng, cfg.crop_scale)
        if rng.random() < cfg.flip_p:
            c = np.ascontiguousarray(c[:, :, ::-1])
        crops.append(c)
    looks = [appearance(c, rng, cfg, scale) for c in crops]
    q, _ = context_distortion(looks[0], rng, scale)
    k, _ = context_distortion(looks[1], rng, scale)
    return q, k, grayscale(crops[0])


class TwoViewDataset(EpochDataset):
    """Training items ``(cat[query, key] along channels, target)``; with ``pairs=False`` (validation)
    ``(query, target)``, the restoration pair. Randomness per ``(seed, epoch, index)``; ``fixed_epoch`` repeats
    the same views every epoch."""

    def __init__(self, pool: np.ndarray, cfg: ViewConfig = ViewConfig(), seed: int = 0, pairs: bool = True,
                 fixed_epoch: int | None = None) -> None:
        self.pool, self.cfg, self.seed, self.pairs, self.fixed_epoch = pool, cfg, seed, pairs, fixed_epoch

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch = self.epoch if self.fixed_epoch is None else self.fixed_epoch
        q, k, target = make_views(self.pool[idx], sample_rng(self.seed, epoch, idx), self.cfg)
        x = np.concatenate([q, k]) if self.pairs else q
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(target)


__all__ = ["PAPER_SIZE", "TwoViewDataset", "ViewConfig", "appearance", "color_jitter", "context_distortion",
           "grayscale", "make_views", "random_resized_crop"]
