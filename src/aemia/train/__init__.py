"""Training: one Trainer with hooks, losses with deep supervision, reproducible datasets."""

from aemia.train.data import ArrayDataset, AugmentConfig, PatchDataset
from aemia.train.hooks import Hook
from aemia.train.losses import BCEDiceLoss, DeepSupervisionLoss, DiceCELoss, get_loss
from aemia.train.trainer import TrainConfig, Trainer

__all__ = ["ArrayDataset", "AugmentConfig", "BCEDiceLoss", "DeepSupervisionLoss", "DiceCELoss", "Hook",
           "PatchDataset", "TrainConfig", "Trainer", "get_loss"]
