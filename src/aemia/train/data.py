"""Training datasets with reproducible random augmentation (:mod:`aemia.train.augment`).

Every random draw comes from ``numpy.random.default_rng([seed, epoch, index])``: the same sample gets the same
augmentation whatever the worker, the number of processes or a kill-and-resume in between, and different
epochs get different draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from aemia.train.augment import AugmentConfig, augment

__all__ = ["ArrayDataset", "AugmentConfig", "EpochDataset", "PatchDataset", "augment", "sample_rng"]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class EpochDataset(Dataset):
    """Base class: the trainer calls ``set_epoch`` before each epoch."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class ArrayDataset(EpochDataset):
    """In-memory 2D (or small 3D) samples: images (N, C, *S) with labels (N, *S) or class targets (N,)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        targets: np.ndarray | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        ids: Sequence[str] | None = None,
    ) -> None:
        if labels is None and targets is None:
            raise ValueError("ArrayDataset needs labels (segmentation) or targets (classification)")
        self.images = images
        self.labels = labels
        self.targets = targets
        self.augment_cfg = augment
        self.seed = seed
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[idx]
        lab = None if self.labels is None else self.labels[idx]
        if self.augment_cfg is not None:
            img, lab = augment(img, lab, sample_rng(self.seed, self.epoch, idx), self.augment_cfg)
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        if lab is not None:
            return x, torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))
        return x, torch.tensor(int(self.targets[idx]), dtype=torch.int64)  # type: ignore[index]


class PatchDataset(EpochDataset):
    """Random patches from volumes, with nnU-Net's foreground oversampling (1/3 of patches centred on label>0).

    ``volumes``: list of (image (C, *S) float32, label (*S) int). Volumes smaller than the patch are padded.
    One epoch = ``patches_per_volume`` × number of volumes samples.
    """

    def __init__(
        self,
        volumes: Sequence[tuple[np.ndarray, np.ndarray]],
        patch_size: Sequence[int],
        patches_per_volume: int = 8,
        foreground_fraction: float = 1 / 3,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.patch = tuple(int(p) for p in patch_size)
        self.volumes = [_pad_to(img, lab, self.patch) for img, lab in volumes]
        self.fg = [np.argwhere(lab > 0) for _, lab in self.volumes]
        self.per_volume = patches_per_volume
        self.fg_fraction = foreground_fraction
        self.augment_cfg = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.volumes) * self.per_volume

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = sample_rng(self.seed, self.epoch, idx)
        v = idx % len(self.volumes)
        img, lab = self.volumes[v]
        shape = lab.shape
        if len(self.fg[v]) and rng.random() < self.fg_fraction:
            centre = self.fg[v][rng.integers(len(self.fg[v]))]
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, shape)]
        else:
            start = [int(rng.integers(0, s - p + 1)) for p, s in zip(self.patch, shape)]
        sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        pimg, plab = img[(slice(None),) + sl], lab[sl]
        if self.augment_cfg is not None:
            pimg, plab = augment(pimg, plab, rng, self.augment_cfg)
        return torch.from_numpy(np.ascontiguousarray(pimg, dtype=np.float32)), torch.from_numpy(
            np.ascontiguousarray(plab).astype(np.int64)
        )


def _pad_to(img: np.ndarray, lab: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    pads = [(0, max(0, p - s)) for p, s in zip(patch, lab.shape)]
    if any(b for _, b in pads):
        img = np.pad(img, [(0, 0)] + pads, mode="constant", constant_values=float(img.min()))
        lab = np.pad(lab, pads, mode="constant")
    return img, lab
