"""Train the universal model on several partially labelled data sets, through the one Trainer.

``train_universal(UniversalConfig(datasets=["kvasir", "ph2", ...]), "runs/u2d")`` writes::

    runs/u2d/config.yaml                     the recipe (UniversalConfig + TrainConfig)
    runs/u2d/prompt_embeddings.safetensors   the class prompts' 384-d embeddings (computed once, cached)
    runs/u2d/log.jsonl, checkpoints/         the Trainer's (best = the last epoch's weight average)

Recipe (CPU preset; the paper's is AdamW 1e-4, weight decay 1e-5, 2000 epochs on a GPU): AdamW lr 1e-3,
weight decay 1e-5, 5% warm-up then cosine, batch 16, ``cycles`` Ark cycles over the data sets with
``steps_per_turn`` batches per data-set turn, the encoder locked for the first cycle (Foundation X), the EMA
teacher's consistency weight c from 0 to 0.5 (Ark).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from aemia.errors import CheckpointError, InputError
from aemia.nets.checkpoint import load_weights
from aemia.runs.folder import RunFolder
from aemia.runs.init import resolve_init
from aemia.train.trainer import TrainConfig, Trainer
from aemia.universal.data import IN_CHANNELS, CyclicSet, class_union, head_sizes, spec_of
from aemia.universal.loss import UniversalLoss
from aemia.universal.model import UniversalModel, build_universal
from aemia.universal.prompts import prompt_embeddings
from aemia.universal.schedule import ArkTeacher, LockRelease


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=16, lr=1e-3, optimizer="adamw", weight_decay=1e-5, amp="none",
                       deep_supervision=False)


@dataclass
class UniversalConfig:
    datasets: list[str]
    backbone: str = "unet"
    features: list[int] = field(default_factory=lambda: [16, 16, 32, 64, 128])
    embedding: str = "text"  # text (prompt embeddings) | learned (the rand_embedding ablation)
    cycles: int = 10  # Ark cycles over all data sets
    steps_per_turn: int = 10  # batches per data-set turn
    lock_cycles: int = 1  # Foundation X: cycles with the encoder frozen
    c_max: float = 0.5
    init: str | None = None  # continue from a universal run's (or shipped model's) weights
    train: TrainConfig = field(default_factory=_default_train)

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("give at least one data set")
        for name in self.datasets:
            spec_of(name)
        if self.cycles < 1 or self.steps_per_turn < 1 or self.lock_cycles < 0:
            raise ValueError("cycles and steps per turn must be >= 1, lock cycles >= 0")
        self.train.epochs = self.cycles * len(self.datasets)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UniversalConfig":
        return cls(**{**d, "train": TrainConfig(**d["train"])})


def build_model(cfg: UniversalConfig, run_dir: Path | None) -> UniversalModel:
    classes = class_union(cfg.datasets)
    emb = prompt_embeddings(classes, run_dir) if cfg.embedding == "text" else None
    torch.manual_seed(cfg.train.seed)
    return UniversalModel(2, IN_CHANNELS, classes, backbone=cfg.backbone, features=cfg.features,
                          embedding=cfg.embedding, text_embeddings=emb, heads=head_sizes(cfg.datasets))


def train_universal(cfg: UniversalConfig, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) the universal model; returns the Trainer's result."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if resume:
        cfg = UniversalConfig.from_dict(folder.config_dict())
    elif folder.has_checkpoint("last"):
        raise InputError(run_dir, "run folder already holds a training run: pass --resume to continue it, or choose a new --run")
    run_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, run_dir)
    if cfg.init:
        source = load_universal(cfg.init)
        if source.class_names != model.class_names or list(source.heads) != list(model.heads):
            raise InputError(Path(cfg.init), "--init must be a universal model of the same data sets")
        load_weights(model, resolve_init(cfg.init), strict=True)
        print(f"init from {cfg.init}: every tensor loaded", flush=True)
    train_set = CyclicSet(cfg.datasets, model.class_names, cfg.steps_per_turn * cfg.train.batch_size,
                          seed=cfg.train.seed)
    folder.save_config(cfg.to_dict())
    head_names = list(model.heads)
    loss = UniversalLoss([head_names.index(n) if n in head_names else -1 for n in cfg.datasets])
    hooks = [LockRelease(cfg.lock_cycles * len(cfg.datasets)), ArkTeacher(cfg.train.epochs, cfg.c_max)]
    trainer = Trainer(model, train_set, None, cfg.train, run_dir, hooks=hooks, loss=loss)
    return trainer.fit(resume=resume)


def load_universal(source: str | Path) -> UniversalModel:
    """The trained universal model of a run folder, a checkpoint or a shipped name (``universal``), loaded strictly."""
    stem = resolve_init(source)
    cfg_path = stem.with_name(stem.name + ".json")
    if not cfg_path.is_file():
        cfg_path = stem.parent / "config.json"
    try:
        config = json.loads(cfg_path.read_text())["model"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(cfg_path, f"no universal model config ({exc})") from None
    if config.get("name") != "universal":
        raise CheckpointError(cfg_path, f"not a universal model (a {config.get('name')!r})")
    model = build_universal(config)
    load_weights(model, stem, strict=True)
    return model.eval()


__all__ = ["UniversalConfig", "build_model", "load_universal", "train_universal"]
