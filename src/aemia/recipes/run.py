"""A training run from a dataset name to a run folder with checkpoints, metrics and a report.

``train_run(RunConfig(dataset="kvasir", model="unetpp", label_fraction=0.1), "runs/kv10")`` writes::

    runs/kv10/config.yaml     the full recipe (RunConfig + TrainConfig), the seed included
    runs/kv10/splits.json     the dataset's split and the labelled subset actually used
    runs/kv10/log.jsonl       one line per epoch
    runs/kv10/checkpoints/    last.safetensors (resumable), best.safetensors + best.json
    runs/kv10/metrics.json    test metrics with bootstrap 95% CIs
    runs/kv10/per_case.csv, figures/, report.html

2D data sets train on whole images (resized to ``size``); 3D data sets on random patches with foreground
oversampling and are evaluated by sliding window; classification data sets train the ResNet classifier.
With ``semi`` (2D only) a mean-teacher or pseudo-label hook (:mod:`aemia.semisup`) also learns from the training
images outside the labelled subset; the log gets ``semi_*`` entries and ``figures/semi.png`` is drawn. ``train``
never imports ``semisup``: the methods register themselves in :data:`aemia.train.extensions.SEMI_METHODS` when
:mod:`aemia.semisup` is imported (the CLI does), and :func:`train_run` looks ``cfg.semi`` up there.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aemia.data.catalog import CatalogDataset, get_dataset
from aemia.data.normalise import default_normaliser, normalise
from aemia.errors import InputError
from aemia.nets import create_model
from aemia.nets.registry import model_task
from aemia.runs.config import RunConfig, class_names, labelled_subset
from aemia.runs.folder import RunFolder
from aemia.runs.init import init_weights
from aemia.train.augment import augment_preset
from aemia.train.data import ArrayDataset, PatchDataset
from aemia.train.extensions import semi_method
from aemia.train.trainer import Trainer


def resolve_task(cfg: "RunConfig", ds: CatalogDataset) -> str:
    """The run's task: ``auto`` is classification for classification-only data sets, else segmentation."""
    if cfg.task == "auto":
        return "classification" if ds.task == "classification" else "segmentation"
    if cfg.task == "classification" and not ds.classes:
        raise InputError(None, f"data set '{ds.name}' has no image-level classes: it cannot train --task classification")
    if cfg.task == "liver-tumor" and ds.dims != 3:
        raise InputError(None, f"--task liver-tumor needs 3D CT; data set '{ds.name}' is {ds.dims}D")
    if cfg.task == "segmentation" and ds.task == "classification":
        raise InputError(None, f"data set '{ds.name}' has no masks: it cannot train --task segmentation")
    return cfg.task


class _VolumeSet:
    """Validation volumes as (image, label) tensors for the trainer's sliding-window validation."""

    def __init__(self, volumes: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.volumes = volumes

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, lab = self.volumes[i]
        return torch.from_numpy(img), torch.from_numpy(lab.astype(np.int64))


def remap_labels(label: np.ndarray, keep: dict[int, str] | None) -> np.ndarray:
    if not keep:
        return label.astype(np.int64)
    out = np.zeros(label.shape, np.int64)
    for new, src in enumerate(sorted(keep), start=1):
        out[label == src] = new
    return out


def _load_volume(ds: CatalogDataset, case: Any, cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image and remapped label, resampled to the run's working spacing."""
    from aemia.data.transforms import resample_to_spacing

    s = ds.load(case)
    img = normalise(s.image.array, cfg.normaliser or default_normaliser(ds.modality, ds.dims, cfg.window))
    lab = remap_labels(s.label, cfg.labels)
    if cfg.spacing:
        img = resample_to_spacing(img, s.image.spacing, cfg.spacing, order=1)
        lab = resample_to_spacing(lab[None], s.image.spacing, cfg.spacing, order=0)[0]
    return img, lab


def _init_weights(model: torch.nn.Module, init: str) -> None:
    """Pretrained weights by run folder, checkpoint or shipped name (``universal``): :func:`aemia.runs.init.init_weights`
    prints what loaded and refuses (CheckpointError → exit 2) when nothing fits, so a wrong ``--init`` never
    silently trains from scratch."""
    init_weights(model, init)


def build(cfg: RunConfig, ds: CatalogDataset, labelled: list[str]) -> tuple[torch.nn.Module, Any, Any, str]:
    """Model, training set, validation set and task for a run."""
    seed = cfg.train.seed
    if cfg.semi and ds.dims != 2:
        raise InputError(None, f"--semi is for 2D data sets; '{ds.name}' is {ds.dims}D")
    torch.manual_seed(seed)  # model initialisation is part of the seeded recipe
    aug = augment_preset(cfg.augment)
    task = resolve_task(cfg, ds)
    if task == "liver-tumor":
        from aemia.recipes.liver_tumor import build_liver_tumor

        return build_liver_tumor(cfg, ds, labelled)
    if cfg.synthetic_tumors:
        raise InputError(None, "--synthetic-tumors goes with --task liver-tumor")
    if task == "classification" and model_task(cfg.model) != "classification":
        raise InputError(None, f"data set '{ds.name}' is classification: use --model resnet or arl-resnet")
    if ds.dims == 2:
        x, y, t = ds.arrays("train", cfg.size)
        keep = set(labelled)
        idx = [i for i, cid in enumerate(ds.case_ids("train")) if cid in keep]
        vx, vy, vt = ds.arrays("val", cfg.size) if ds.splits.get("val") else (None, None, None)
        if task == "classification":
            train_set = ArrayDataset(x[idx], targets=t[idx], augment=aug, seed=seed)
            val_set = ArrayDataset(vx, targets=vt) if vx is not None else None
            out_ch = len(ds.classes)
        else:
            train_set = ArrayDataset(x[idx], y[idx], augment=aug, seed=seed)
            val_set = ArrayDataset(vx, vy) if vx is not None else None
            out_ch = len(ds.labels)
        in_ch = x.shape[1]
    else:
        patch = cfg.patch or [64, 64, 64]
        cfg.patch = list(patch)
        cases = [c for c in ds.splits["train"] if c.id in set(labelled)]
        if cfg.spacing is None:
            from aemia.data.io import read_image

            spacings = np.array([read_image(c.images[0]).spacing for c in cases])
            cfg.spacing = [float(v) for v in np.median(spacings, axis=0)]
        vols = [_load_volume(ds, c, cfg) for c in cases]
        train_set = PatchDataset(vols, patch, cfg.patches_per_volume, augment=None if aug is None else replace(aug, rot90=False),
                                 seed=seed)
        val_set = _VolumeSet([_load_volume(ds, c, cfg) for c in ds.splits.get("val", [])]) or None
        cfg.train.val_roi = list(patch)
        in_ch = vols[0][0].shape[0]
        out_ch = len(class_names(cfg, ds))
    kwargs: dict[str, Any] = {}
    model = create_model(cfg.model, ds.dims, in_ch, out_ch, features=cfg.widths(),
                         deep_supervision=cfg.model == "unetpp" and cfg.train.deep_supervision, **kwargs)
    if cfg.init:
        _init_weights(model, cfg.init)
    return model, train_set, val_set, task


def train_run(cfg: RunConfig, run_dir: str | Path, resume: bool = False, extras: Any = None) -> dict[str, Any]:
    """Train (or resume) and evaluate; returns the metrics written to ``metrics.json``.

    ``extras`` is passed to :func:`aemia.recipes.report.evaluate_run` (extra analyses in the report)."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if resume:
        cfg = folder.config()
    elif folder.has_checkpoint("last"):
        raise InputError(run_dir, "run folder already holds a training run: pass --resume to continue it, or choose a new --run")
    make_semi = semi_method(cfg.semi) if cfg.semi else None
    ds = get_dataset(cfg.dataset)
    labelled = labelled_subset(ds.case_ids("train"), cfg.label_fraction, cfg.labelled_seed())
    model, train_set, val_set, task = build(cfg, ds, labelled)
    cfg.normaliser = cfg.normaliser or default_normaliser(ds.modality, ds.dims, cfg.window)  # recorded in config.yaml
    # epochs raised to min_steps now, not only inside Trainer, so the semi method's ramp-up (a share of the epochs)
    # is a share of the epochs that actually run
    cfg.train = cfg.train.with_min_steps(math.ceil(len(train_set) / cfg.train.batch_size))
    hooks: list[Any] = []
    semi = None
    if make_semi is not None:  # the method may write its resolved settings into cfg (saved in config.yaml)
        n_classes = len(ds.classes) if task == "classification" else len(class_names(cfg, ds))
        semi = make_semi(cfg, ds, labelled, task, n_classes)
        hooks.append(semi.hook)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, train_set, val_set, cfg.train, run_dir, hooks=hooks, task=task)
    cfg.train = trainer.cfg  # epochs raised to min_steps, if any: config.yaml records what actually runs
    folder.save_config(cfg)
    folder.save_splits({**ds.split_manifest(), "labelled": labelled, "label_fraction": cfg.label_fraction})
    result = trainer.fit(resume=resume)
    if not trainer.is_main:
        return {}
    from aemia.recipes.report import evaluate_run

    if cfg.task == "liver-tumor":
        from aemia.recipes.liver_tumor import evaluate_liver_tumor

        return evaluate_liver_tumor(run_dir, cfg, ds, result["history"], labelled)
    if semi is None:
        return evaluate_run(run_dir, cfg, ds, result["history"], labelled, extras=extras)
    return semi.report(run_dir, result["history"],
                       lambda more: evaluate_run(run_dir, cfg, ds, result["history"], labelled, extras=more), extras)
