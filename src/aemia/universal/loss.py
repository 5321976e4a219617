"""Partial-label loss of the Universal Model (METHODS.md §4.2; ``utils/loss.py`` of the original code).

Each data set annotates some of the classes (the published ``TEMPLATE``). Per sample and class the loss is
``BCEWithLogits`` (mean over pixels) + binary soft Dice loss (sigmoid, smooth 1), computed per (sample, class)
rather than with the original's ``view(-1)`` Dice (which would raise as stored); it is averaged over the
**annotated** (sample, class) pairs only, so a class a data set does not label gets exactly zero gradient from
its images (tested). Images with an image-level label add the cross-entropy of their data set's head (Ark,
METHODS.md §6.6, one head per data set).

Targets are the tuple ``(masks (N, K, *S), annotated (N, K) bool, dataset (N,), target (N,) with -1 = none)``;
outputs are :meth:`UniversalModel.forward_train`'s ``(seg, feature, heads)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def per_class_losses(logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """(N, K) BCE + soft Dice loss of every (sample, class) pair."""
    logits, masks = logits.float(), masks.float()
    dims = tuple(range(2, logits.ndim))
    bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none").mean(dims)
    p = torch.sigmoid(logits)
    dice = (2 * (p * masks).sum(dims) + smooth) / (p.sum(dims) + masks.sum(dims) + smooth)
    return bce + (1.0 - dice)


def partial_label_loss(logits: torch.Tensor, masks: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Mean BCE + Dice over the annotated (sample, class) pairs; 0 (attached to the graph) when none is."""
    per = per_class_losses(logits, masks)
    chosen = per[annotated.bool()]
    return chosen.mean() if chosen.numel() else logits.sum() * 0.0


class UniversalLoss(nn.Module):
    """Partial-label segmentation loss + per-data-set classification cross-entropy.

    ``head_of[d]`` is the position (in the model's ``heads``) of data set ``d``'s head, or -1 for none."""

    def __init__(self, head_of: Sequence[int]) -> None:
        super().__init__()
        self.head_of = list(head_of)

    def forward(self, outputs: Any, y: Sequence[torch.Tensor]) -> torch.Tensor:
        seg, _, heads = outputs
        masks, annotated, dataset, target = y
        loss = partial_label_loss(seg, masks, annotated)
        for d in dataset.unique().tolist():
            h = self.head_of[int(d)]
            rows = (dataset == d) & (target >= 0)
            if h >= 0 and bool(rows.any()):
                loss = loss + F.cross_entropy(heads[h][rows].float(), target[rows].long()) * rows.float().mean()
        return loss


__all__ = ["UniversalLoss", "partial_label_loss", "per_class_losses"]
