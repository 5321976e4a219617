"""A run's recipe: :class:`RunConfig` (data set, network, label budget, preprocessing, :class:`TrainConfig`) and
the vocabulary it is checked against (width presets, tasks, semi-supervised methods).

``config.yaml`` in a run folder is ``RunConfig.to_dict()``; :class:`aemia.runs.folder.RunFolder` reads and
writes it. The labelled subset rule and the class names of a run live here too, because both training
(:mod:`aemia.recipes.run`) and reading a run back (:mod:`aemia.infer.predictor`, :mod:`aemia.semisup.ssac`)
need them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from aemia.data.catalog import CatalogDataset
from aemia.train.augment import augment_preset
from aemia.train.trainer import TrainConfig

#: Width presets. ``paper`` is the UNet++ / U-Net papers' recipe (GPU); ``cpu`` fits 2 cores.
PRESETS: dict[str, list[int]] = {
    "paper": [32, 64, 128, 256, 512],
    "cpu": [16, 16, 32, 64, 128],
    "tiny": [8, 16, 32, 64],
}


RUN_TASKS = ("auto", "segmentation", "classification", "liver-tumor")

#: ``RunConfig.semi``: the semi-supervised hooks of :mod:`aemia.semisup` a run can train with.
SEMI_METHODS = ("mean-teacher", "pseudo-label")

#: Output class 2 of a liver-tumor run (:mod:`aemia.recipes.liver_tumor`).
TUMOR_CLASS = "liver tumor"


def check_method(method: str) -> str:
    """The method's canonical name (``mean_teacher`` → ``mean-teacher``); ValueError if unknown."""
    name = method.strip().lower().replace("_", "-")
    if name not in SEMI_METHODS:
        raise ValueError(f"unknown semi-supervised method {method!r}; choose one of {SEMI_METHODS}")
    return name


@dataclass
class RunConfig:
    dataset: str
    model: str = "unetpp"
    preset: str = "cpu"
    features: list[int] | None = None
    label_fraction: float = 1.0
    subset_seed: int | None = None  # which cases are labelled (None: the training seed); fixed → seeds vary training only
    size: int | None = None  # 2D: resize images to size x size
    patch: list[int] | None = None  # 3D: training patch / sliding-window size
    patches_per_volume: int = 16
    labels: dict[int, str] | None = None  # 3D: keep only these source labels, renumbered 1..K
    spacing: list[float] | None = None  # 3D: working voxel size in mm (default: median of the training cases)
    init: str | None = None  # pretrained weights (a run folder or a checkpoint path)
    tta: bool = False
    eval_split: str = "test"
    task: str = "auto"  # auto (the data set's own task) | segmentation | classification (PH2: image + diagnosis)
    #                     | liver-tumor (3D CT: liver + tumor from liver masks only, aemia.recipes.liver_tumor)
    synthetic_tumors: bool = False  # liver-tumor: train on synthetic tumors in healthy livers (no tumor labels)
    window: list[float] | None = None  # CT: HU window to [0, 1] (default: abdominal; liver-tumor: -21..189)
    normaliser: str | None = None  # aemia.data.normalise spec (None: default_normaliser, resolved at build time)
    augment: str = "strong"  # aemia.train.augment.AUGMENT_PRESETS: strong | light | none
    semi: str | None = None  # 2D: mean-teacher | pseudo-label on the unlabelled rest of the training split
    semi_weight: float | None = None  # max weight of the unlabelled term (None: the method's default)
    semi_threshold: float | None = None  # pseudo-label confidence (None: 0.95 classification, 0.9 segmentation)
    postprocess: dict[str, Any] | None = None  # label-map rule chosen after training (liver-tumor: aemia.infer.predictor)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label fraction must be in (0, 1], got {self.label_fraction}")
        if self.task not in RUN_TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {RUN_TASKS}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        augment_preset(self.augment)  # ValueError naming the choices
        if self.semi is not None:
            self.semi = check_method(self.semi)
        if self.semi_weight is not None and self.semi_weight < 0:
            raise ValueError(f"semi weight must be ≥ 0, got {self.semi_weight}")
        if self.semi_threshold is not None and not 0.0 < self.semi_threshold <= 1.0:
            raise ValueError(f"semi threshold must be in (0, 1], got {self.semi_threshold}")

    def labelled_seed(self) -> int:
        """The seed that picks the labelled subset: ``subset_seed``, else the training seed."""
        return self.train.seed if self.subset_seed is None else int(self.subset_seed)

    def widths(self) -> list[int]:
        return list(self.features) if self.features else list(PRESETS[self.preset])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        args = {k: v for k, v in d.items() if k in known and k != "train"}
        if args.get("labels"):
            args["labels"] = {int(k): v for k, v in args["labels"].items()}
        return cls(**args, train=TrainConfig(**d.get("train", {})))


def labelled_subset(ids: list[str], fraction: float, seed: int) -> list[str]:
    """The first ``ceil(fraction·N)`` ids of a seeded permutation: nested across fractions for one seed."""
    n = max(1, math.ceil(fraction * len(ids) - 1e-9))
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in sorted(order[:n])]


def class_names(cfg: RunConfig, ds: CatalogDataset) -> dict[int, str]:
    """Output index → name for the run's segmentation classes (background included)."""
    if cfg.task == "liver-tumor":
        return {0: "background", 1: "liver", 2: TUMOR_CLASS}
    if cfg.labels:
        return {0: "background", **{i: cfg.labels[src] for i, src in enumerate(sorted(cfg.labels), start=1)}}
    return dict(ds.labels)
