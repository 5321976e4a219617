"""MB-DCNN's data: the lesion cases of a 2D data set with masks and classes, the guided (image + mask or CAM)
training set, and class-stratified folds for cross-validation (IEEE TMI 2020, METHODS.md §7.2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aemia.errors import InputError
from aemia.train.data import AugmentConfig, EpochDataset, augment, sample_rng

__all__ = ["GuidedArrayDataset", "LesionCases", "case_table", "load_cases", "stratified_folds"]


class GuidedArrayDataset(EpochDataset):
    """Images plus a guidance map (coarse mask or CAM) stacked as an extra input channel.

    The guide goes through the same flips and rotations as the image (and mask) but no intensity change: the
    spatial draws of :func:`aemia.train.data.augment` are replayed from the same ``[seed, epoch, index]`` RNG with
    intensity off, so a guided sample is augmented exactly like the plain :class:`ArrayDataset` sample.
    """

    def __init__(self, images: np.ndarray, guides: np.ndarray, labels: np.ndarray | None = None,
                 targets: np.ndarray | None = None, augment: AugmentConfig | None = None, seed: int = 0) -> None:
        if labels is None and targets is None:
            raise ValueError("GuidedArrayDataset needs labels (segmentation) or targets (classification)")
        if guides.shape[0] != images.shape[0] or guides.shape[2:] != images.shape[2:] or guides.ndim != 4:
            raise ValueError(f"guides {guides.shape} must be (N, G, H, W) matching images {images.shape}")
        self.images, self.guides, self.labels, self.targets = images, guides, labels, targets
        self.augment_cfg, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, guide = self.images[idx], self.guides[idx]
        lab = None if self.labels is None else self.labels[idx]
        if self.augment_cfg is not None:
            img, lab = augment(img, lab, sample_rng(self.seed, self.epoch, idx), self.augment_cfg)
            spatial = self.augment_cfg.spatial_only()
            guide, _ = augment(guide, None, sample_rng(self.seed, self.epoch, idx), spatial)
        x = torch.from_numpy(np.concatenate([img, guide], axis=0).astype(np.float32, copy=False))
        if lab is not None:
            return x, torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))
        return x, torch.tensor(int(self.targets[idx]), dtype=torch.int64)  # type: ignore[index]


def stratified_folds(ids: Sequence[str], strata: Sequence[Any], k: int, seed: int) -> list[list[str]]:
    """Split ``ids`` into ``k`` folds with the strata spread evenly: per stratum (in sorted order) the sorted ids are
    shuffled with ``seed`` and dealt round-robin, continuing where the previous stratum stopped. Folds sorted."""
    if k < 2:
        raise ValueError("need at least 2 folds")
    if len(ids) != len(strata):
        raise ValueError("ids and strata differ in length")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    by_stratum: dict[str, list[str]] = {}
    for i, s in zip(ids, strata):
        by_stratum.setdefault(str(s), []).append(str(i))
    pos = 0
    for key in sorted(by_stratum):
        members = sorted(by_stratum[key])
        for j in rng.permutation(len(members)):
            folds[pos % k].append(members[int(j)])
            pos += 1
    return [sorted(f) for f in folds]



@dataclass
class LesionCases:
    """Cases of a 2D lesion data set at one size: images, masks, class targets, ids and class names."""


    x: np.ndarray  # (N, 3, S, S) float32
    y: np.ndarray  # (N, S, S) uint8
    t: np.ndarray  # (N,) int64
    ids: list[str]
    classes: list[str]


def case_table(dataset: str) -> tuple[list[str], list[int], list[str], dict[str, list[str]]]:
    """Ids, class targets, class names and split ids of a data set usable by MB-DCNN (no image is read).

    Raises :class:`InputError` unless the data set is 2D with a lesion mask and a class for every case."""
    from aemia.data.catalog import get_dataset

    ds = get_dataset(dataset)
    if ds.dims != 2 or not ds.classes or "segmentation" not in ds.task:
        raise InputError(None, f"MB-DCNN needs a 2D data set with both lesion masks and image classes; "
                               f"'{dataset}' is {ds.dims}D, task '{ds.task}', classes {ds.classes or 'none'}")
    cases = [c for split in ds.splits for c in ds.splits[split]]
    lacking = [c.id for c in cases if c.label is None or c.target is None]
    if lacking:
        raise InputError(None, f"'{dataset}' cases without a mask or a class: {', '.join(lacking[:5])}")
    splits = {k: [c.id for c in v] for k, v in ds.splits.items()}
    return [c.id for c in cases], [int(c.target) for c in cases], list(ds.classes), splits  # type: ignore[arg-type]


def load_cases(dataset: str, size: int, ids: Sequence[str] | None = None) -> LesionCases:
    """All cases of a 2D data set with masks and classes (every split), at ``size``², optionally only ``ids``."""
    from aemia.data.catalog import get_dataset

    case_table(dataset)
    ds = get_dataset(dataset)
    xs, ys, ts, all_ids = [], [], [], []
    for split in ds.splits:
        if not ds.splits[split]:
            continue
        x, y, t = ds.arrays(split, size)
        if y is None or t is None:
            raise InputError(None, f"data set '{dataset}' split '{split}' lacks masks or classes")
        xs.append(x), ys.append(y), ts.append(t), all_ids.extend(ds.case_ids(split))
    data = LesionCases(np.concatenate(xs), (np.concatenate(ys) > 0).astype(np.uint8), np.concatenate(ts), all_ids,
                 list(ds.classes))
    if ids is None:
        return data
    index = {cid: i for i, cid in enumerate(data.ids)}
    unknown = [c for c in ids if c not in index]
    if unknown:
        raise InputError(None, f"case ids not in '{dataset}': {', '.join(unknown[:5])}")
    sel = [index[c] for c in ids]
    return LesionCases(data.x[sel], data.y[sel], data.t[sel], [data.ids[i] for i in sel], data.classes)

