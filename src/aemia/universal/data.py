"""The partially labelled data sets of the universal model and the cyclic (Ark) sampler that feeds the Trainer.

Each data set declares the classes it annotates (the Universal Model's ``TEMPLATE``, METHODS.md §4.2) and,
when it has image-level labels, gets its own classification head (Ark, §6.6). :class:`CyclicSet` is the
Trainer's training set: one Trainer epoch is one data set's turn (Ark's cyclic training: "each epoch loops
over the datasets in turn"), of ``samples_per_turn`` samples that walk through the data set's seeded
permutation from where its previous turn stopped, so every image is seen before any is repeated. A batch
therefore always comes from one data set (one image size, one head). Each item has a second, independently
augmented view of the same image for the EMA teacher's consistency term.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from aemia.data.catalog import get_dataset
from aemia.errors import InputError
from aemia.train.data import AugmentConfig, EpochDataset, augment, sample_rng

IN_CHANNELS = 3  # grey images are repeated to RGB so one backbone takes every 2D set


@dataclass(frozen=True)
class UniversalSpec:
    """What a data set contributes: ``classes`` maps its mask values to class names; ``head`` = image labels."""

    classes: dict[int, str]
    size: int
    head: bool


#: The six 2D sets of issue 14 (MedMNIST at 64 px, upsampled from 28; the rest at 128 px).
SPECS_2D: dict[str, UniversalSpec] = {
    "kvasir": UniversalSpec({1: "polyp"}, 128, False),
    "ph2": UniversalSpec({1: "skin lesion"}, 128, True),
    "drive": UniversalSpec({1: "retinal vessel"}, 128, False),
    "busi": UniversalSpec({}, 128, True),
    "pneumoniamnist": UniversalSpec({}, 64, True),
    "breastmnist": UniversalSpec({}, 64, True),
}


def spec_of(name: str) -> UniversalSpec:
    if name not in SPECS_2D:
        raise InputError(None, f"data set {name!r} is not a universal-model data set; choose from {', '.join(SPECS_2D)}")
    return SPECS_2D[name]


def class_union(datasets: list[str]) -> list[str]:
    """Every class annotated by one of ``datasets``, in data set order, without repeats."""
    out: list[str] = []
    for name in datasets:
        out += [c for c in spec_of(name).classes.values() if c not in out]
    return out


def head_sizes(datasets: list[str]) -> dict[str, int]:
    """Classification head size per data set with image-level labels."""
    return {n: len(get_dataset(n).classes) for n in datasets if spec_of(n).head}


def as_rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x, IN_CHANNELS, axis=1) if x.shape[1] == 1 else x


def split_arrays(name: str, split: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Images (RGB, float32), masks and image-level targets of one split at the data set's universal size."""
    x, y, t = get_dataset(name).arrays(split, size or spec_of(name).size)
    return as_rgb(x), y, t


@dataclass
class _Member:
    name: str
    x: np.ndarray
    y: np.ndarray | None
    t: np.ndarray | None
    channels: dict[int, int]  # mask value → class index


@dataclass
class CyclicSet(EpochDataset):
    """Ark's cyclic pass: epoch ``e`` serves data set ``e mod D``; items ``(view1, targets, view2)``."""

    datasets: list[str]
    class_names: list[str]
    samples_per_turn: int
    seed: int = 0
    augment_cfg: AugmentConfig = field(default_factory=AugmentConfig)
    members: list[_Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        index = {c: i for i, c in enumerate(self.class_names)}
        for name in self.datasets:
            x, y, t = split_arrays(name, "train")
            chans = {v: index[c] for v, c in spec_of(name).classes.items()}
            self.members.append(_Member(name, x, y if chans else None, t if spec_of(name).head else None, chans))
        self.epoch = 0

    def __len__(self) -> int:
        return self.samples_per_turn

    def member(self, epoch: int) -> tuple[int, _Member]:
        d = epoch % len(self.members)
        return d, self.members[d]

    def source_index(self, epoch: int, i: int) -> int:
        """Index into the turn's data set: its seeded permutations, continued from the previous turn."""
        d, m = self.member(epoch)
        pos = (epoch // len(self.members)) * self.samples_per_turn + i
        n = len(m.x)
        perm = np.random.default_rng([self.seed, d, pos // n]).permutation(n)
        return int(perm[pos % n])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        d, m = self.member(self.epoch)
        j = self.source_index(self.epoch, i)
        k = len(self.class_names)
        label = m.y[j] if m.y is not None else None
        rng = sample_rng(self.seed, self.epoch, i)
        img1, lab1 = augment(m.x[j], label, rng, self.augment_cfg)
        img2, _ = augment(m.x[j], None, rng, self.augment_cfg)
        masks = np.zeros((k, *img1.shape[1:]), np.float32)
        annotated = np.zeros(k, bool)
        for value, c in m.channels.items():
            masks[c] = lab1 == value
            annotated[c] = True
        target = int(m.t[j]) if m.t is not None else -1
        y = (torch.from_numpy(masks), torch.from_numpy(annotated), torch.tensor(d), torch.tensor(target))
        return torch.from_numpy(img1), y, torch.from_numpy(img2)


__all__ = ["CyclicSet", "IN_CHANNELS", "SPECS_2D", "UniversalSpec", "as_rgb", "class_union", "head_sizes",
           "spec_of", "split_arrays"]
