"""What one round of the simulated annotator (:mod:`aemia.active.simulate`) is made of: the settings of a curve
(:class:`SimulationConfig`), the data set's pool and test arrays (:func:`load_data`), the seeded model
(:func:`new_model`), its training on the round's cases (:func:`fit_round`, the human-in-the-loop recipe of
:func:`aemia.active.continual.fit_model`) and its test evaluation (:func:`evaluate`: AUC for classification,
per-case Dice for segmentation, plus what the bootstrap over test cases needs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aemia.errors import InputError

__all__ = ["DATASETS", "DATASET_DEFAULTS", "SimData", "SimulationConfig", "evaluate", "fit_round", "load_data",
           "new_model", "predict"]

DATASETS = ("pneumoniamnist", "kvasir", "busi")
#: Per data set: task, working size, network, widths, batch size (CPU-sized; override in the config).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "pneumoniamnist": {"task": "classification", "size": 28, "model": "resnet", "features": (16, 32, 64, 128),
                       "batch_size": 32},
    "kvasir": {"task": "segmentation", "size": 64, "model": "unet", "features": (16, 32, 64, 128), "batch_size": 8},
    "busi": {"task": "classification", "size": 64, "model": "resnet", "features": (16, 32, 64, 128),
             "batch_size": 16},
}
CACHE_VERSION = 1

@dataclass
class SimulationConfig:
    """Everything that defines a simulated learning curve (``None`` = the data set's default).

    Attributes:
        dataset: ``pneumoniamnist``, ``kvasir`` or ``busi`` (catalog names).
        initial: size of the random initial labelled set (round 0).
        per_round: cases revealed per query round.
        rounds: number of query rounds after round 0 (the curve has ``rounds + 1`` points).
        mode: training mode per round (``all-labelled`` = ACFT(LQ), the default as in ``aemia active train``;
            ``continual`` = ACFT(HQ), ``new-only``, ``from-scratch``).
        epochs_per_round: epochs over the round's training cases ...
        min_steps: ... but at least this many optimiser steps, so small rounds are not starved.
        size: working size (images and masks resized to ``size x size``); ``None`` = the data set default.
        model: network name (``resnet`` for classification, ``unet`` / ``unetpp`` for segmentation).
        features: network widths per level.
        dropout: dropout in the network (``bald`` needs > 0; applies to every strategy for equal footing).
        lr: peak learning rate (Adam, cosine) of each round.
        batch_size: training batch size.
        hard_threshold: segmentation Dice below which a previously labelled case is "hard" (continual mode).
        reduce: segmentation reduction of per-pixel scores for the uncertainty strategies and ACFT
            (``mean`` or ``foreground``; ``None`` = the strategy's default, ``mean``).
        pool_limit: use only this many pool cases (a fixed seeded subset, the same for every seed); ``None`` = all.
        test_limit: evaluate on this many test cases (a fixed seeded subset); ``None`` = all.
        score_batch: images scored at once.
        n_boot: bootstrap resamples for the confidence intervals.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    dataset: str = "pneumoniamnist"
    initial: int = 20
    per_round: int = 20
    rounds: int = 5
    mode: str = "all-labelled"
    epochs_per_round: int = 10
    min_steps: int = 0
    size: int | None = None
    model: str | None = None
    features: tuple[int, ...] | None = None
    dropout: float = 0.0
    lr: float = 1e-3
    batch_size: int | None = None
    hard_threshold: float = 0.5
    reduce: str | None = None
    pool_limit: int | None = None
    test_limit: int | None = None
    score_batch: int = 32
    n_boot: int = 1000
    device: str = "auto"

    def resolved(self) -> SimulationConfig:
        """A copy with the data set defaults filled in, checked (``InputError`` on a bad value)."""
        from aemia.active.continual import normalise_mode

        name = self.dataset.strip().lower()
        if name not in DATASETS:
            raise InputError(None, f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        d = DATASET_DEFAULTS[name]
        cfg = dataclasses.replace(
            self, dataset=name, mode=normalise_mode(self.mode),
            size=int(self.size if self.size is not None else d["size"]),
            model=self.model or d["model"], features=tuple(int(f) for f in (self.features or d["features"])),
            batch_size=int(self.batch_size or d["batch_size"]),
        )
        for what, value, low in (("--initial", cfg.initial, 1), ("--per-round", cfg.per_round, 1),
                                 ("--rounds", cfg.rounds, 0), ("--epochs", cfg.epochs_per_round, 1),
                                 ("--min-steps", cfg.min_steps, 0), ("--size", cfg.size, 8)):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise InputError(None, f"{what} must be an integer >= {low}, got {value!r}")
        if cfg.task == "segmentation":
            m = 2 ** (len(cfg.features or ()) - 1)
            if cfg.size % m:  # type: ignore[operator]
                raise InputError(None, f"--size {cfg.size} must be a multiple of {m} for {len(cfg.features or ())} "
                                       "network levels")
        if cfg.reduce not in (None, "mean", "foreground"):
            raise InputError(None, f"--reduce must be mean or foreground, got {cfg.reduce!r}")
        return cfg

    @property
    def task(self) -> str:
        return str(DATASET_DEFAULTS[self.dataset.strip().lower()]["task"])

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready values (``features`` as a list), as recorded in every curve file."""
        d = asdict(self)
        d["features"] = list(d["features"] or [])
        return d

    def key(self) -> str:
        """Hash of every setting that changes a curve (not the device)."""
        d = asdict(self)
        d.pop("device", None)
        d.pop("n_boot", None)
        d.pop("score_batch", None)
        d["features"] = list(d["features"] or [])
        d["version"] = CACHE_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------ data


@dataclass
class SimData:
    x_pool: np.ndarray
    y_pool: np.ndarray  # class indices (N,) or masks (N, H, W) int64
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    in_channels: int
    pool_ids: list[int]  # indices into the catalog's train split
    test_ids: list[int]


_DATA_CACHE: dict[tuple[Any, ...], SimData] = {}


def _subset(n: int, limit: int | None, salt: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([20240611, salt]).permutation(n)[: int(limit)])


def load_data(cfg: SimulationConfig) -> SimData:
    key = (cfg.dataset, cfg.size, cfg.pool_limit, cfg.test_limit)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    from aemia.data.catalog import get_dataset

    ds = get_dataset(cfg.dataset)
    size = None if cfg.dataset == "pneumoniamnist" and cfg.size == 28 else cfg.size
    parts = []
    for split in ("train", "test"):
        x, lab, tgt = ds.arrays(split, size)
        y = tgt if cfg.task == "classification" else lab
        if y is None:
            raise InputError(None, f"{cfg.dataset} {split} split has no {'targets' if cfg.task == 'classification' else 'masks'}")
        parts.append((x, np.asarray(y, dtype=np.int64)))
    (xp, yp), (xt, yt) = parts
    pi = _subset(len(xp), cfg.pool_limit, 0)
    ti = _subset(len(xt), cfg.test_limit, 1)
    if cfg.task == "classification":
        n_classes = len(ds.classes) if ds.classes else int(max(yp.max(), yt.max()) + 1)
    else:
        n_classes = int(max(int(yp.max()), int(yt.max()), 1) + 1)
    data = SimData(np.ascontiguousarray(xp[pi]), yp[pi], np.ascontiguousarray(xt[ti]), yt[ti], n_classes,
                 int(xp.shape[1]), pi.tolist(), ti.tolist())
    _DATA_CACHE[key] = data
    return data


def new_model(cfg: SimulationConfig, data: SimData, seed: int) -> Any:
    import torch

    from aemia.nets import create_model

    torch.manual_seed(seed)
    return create_model(cfg.model or "", 2, data.in_channels, data.n_classes, features=cfg.features,
                        deep_supervision=cfg.model == "unetpp", dropout=cfg.dropout)


def predict(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    import torch

    from aemia.nets.predict import predict_probs

    out = [predict_probs(model, torch.from_numpy(x[s : s + batch_size]), amp="none").float().cpu().numpy()
           for s in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,))


def evaluate(cfg: SimulationConfig, model: Any, data: SimData) -> dict[str, Any]:
    """Test metric and what the bootstrap needs: per-case Dice, or the class probabilities."""
    from aemia.active.validation import case_scores
    from aemia.evaluate.metrics import auc

    probs = predict(model, data.x_test, cfg.score_batch)
    if cfg.task == "segmentation":
        per_case = case_scores("segmentation", probs, data.y_test, data.n_classes)
        return {"metric": "dice", "value": float(per_case.mean()), "per_case": np.round(per_case, 5).tolist()}
    scores = probs[:, 1] if probs.shape[1] == 2 else probs
    try:
        value: float | None = float(auc(data.y_test, scores))
    except ValueError:
        value = None
    return {"metric": "auc", "value": value, "accuracy": float((probs.argmax(1) == data.y_test).mean()),
            "probs": np.round(scores, 5).tolist()}


def _epochs_for(cfg: SimulationConfig, n_train: int) -> int:
    steps = math.ceil(n_train / int(cfg.batch_size or 1))
    return max(int(cfg.epochs_per_round), math.ceil(cfg.min_steps / max(steps, 1)))


def fit_round(cfg: SimulationConfig, model: Any, data: SimData, idx: np.ndarray, seed: int, work: Path | None,
         progress: bool) -> tuple[Any, int]:
    from aemia.active import continual

    epochs = _epochs_for(cfg, len(idx))
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aemia-sim-", dir=work) as tmp:
        model, _ = continual.fit_model(model, data.x_pool[idx], data.y_pool[idx], cfg.task, tmp, epochs=epochs, lr=cfg.lr,
                             batch_size=int(cfg.batch_size or 8), seed=seed, device=cfg.device, progress=progress,
                             ids=[str(i) for i in idx])
    return model, epochs

