"""Segmentation and classification losses, and deep supervision over several heads.

* ``dice_ce``: soft Dice over the foreground classes (softmax; background left out, as nnU-Net's
  ``do_bg=False``, so a small polyp is not drowned by the background's easy Dice) + cross-entropy, equal weights.
* ``dice_ce_batch``: the same, with nnU-Net's ``batch_dice``: each class's Dice is summed over the whole batch
  before the ratio. For a rare class that is absent from most patches (a synthetic liver tumour in a third of the
  3D patches) the per-sample Dice of a tumour-free patch is ``smooth / (Σp + smooth)``: about 0 for any
  prediction above 1e-5 voxels, so it pushes the whole class towards zero, not towards the right voxels.
* ``bce_dice``: the UNet++ paper's per-head loss, 0.5·BCE + (1 − Dice) on sigmoid outputs with smooth 1
  (DLMIA'18 code ``helper_functions.py``; METHODS.md §2.2).
* ``DeepSupervisionLoss``: Σ_k w_k · loss(head_k, y) with **equal weights by default**; the official PyTorch
  port computed the loss on one head only (UNetPlusPlus issue #75), which this class cannot do by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _one_hot(y: torch.Tensor, n: int) -> torch.Tensor:
    # y: (N, *spatial) integer labels → (N, n, *spatial) float
    return F.one_hot(y.long(), n).movedim(-1, 1).to(torch.float32)


def soft_dice_loss(probs: torch.Tensor, target_1h: torch.Tensor, smooth: float = 1e-5,
                   batch: bool = False) -> torch.Tensor:
    """1 − mean over batch and classes of soft Dice; ``batch=True``: one Dice per class over the whole batch."""
    dims = tuple(range(2, probs.ndim)) if not batch else (0, *range(2, probs.ndim))
    inter = (probs * target_1h).sum(dims)
    denom = probs.sum(dims) + target_1h.sum(dims)
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


class DiceCELoss(nn.Module):
    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = False) -> None:
        super().__init__()
        self.dice_weight, self.ce_weight, self.batch_dice = dice_weight, ce_weight, batch_dice

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        ce = F.cross_entropy(logits, y.long())
        probs, target = logits.softmax(1), _one_hot(y, logits.shape[1])
        if logits.shape[1] > 1:
            probs, target = probs[:, 1:], target[:, 1:]
        dice = soft_dice_loss(probs, target, batch=self.batch_dice)
        return self.ce_weight * ce + self.dice_weight * dice


class BCEDiceLoss(nn.Module):
    """UNet++ (DLMIA'18): 0.5·BCE + Dice loss per class channel, sigmoid outputs, Dice smooth = 1.

    With ``out_channels == 1`` the single channel is the foreground; with more channels every channel is a
    one-vs-rest sigmoid against the one-hot target.
    """

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = y.unsqueeze(1).float() if logits.shape[1] == 1 else _one_hot(y, logits.shape[1])
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return 0.5 * bce + soft_dice_loss(torch.sigmoid(logits), target, smooth=1.0)


class CELoss(nn.Module):
    """Classification cross-entropy (optional label smoothing)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y.long(), label_smoothing=self.label_smoothing)


class RestorationLoss(nn.Module):
    """Models Genesis self-restoration: MSE between sigmoid(output) and the original image (METHODS.md §1.4)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(torch.sigmoid(logits.float()), target.float())


LOSSES: dict[str, Callable[[], nn.Module]] = {"dice_ce": DiceCELoss,
                                              "dice_ce_batch": lambda: DiceCELoss(batch_dice=True),
                                              "bce_dice": BCEDiceLoss, "ce": CELoss, "restoration": RestorationLoss}


def get_loss(name: str) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]()


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``base`` over all heads; weights default to 1 for every head (the Keras recipe)."""

    def __init__(self, base: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.base = base
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(self, heads: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        weights = self.weights or [1.0] * len(heads)
        if len(weights) != len(heads):
            raise ValueError(f"{len(weights)} deep-supervision weights for {len(heads)} heads")
        return sum(w * self.base(h, y) for w, h in zip(weights, heads))  # type: ignore[return-value]
