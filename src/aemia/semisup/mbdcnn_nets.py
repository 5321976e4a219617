"""MB-DCNN's losses and networks: the rank and hybrid segmentation losses, Coarse-SN → Enhanced-SN weight
transfer, the RGB → RGB + mask classifier extension, the class activation map and 9-crop test-time averaging.

Xie, Zhang, Xia, Shen, "A Mutual Bootstrapping Model for Automated Skin Lesion Segmentation and
Classification", IEEE TMI 2020 (METHODS.md §7.2). The recipe that trains them is :mod:`aemia.semisup.bootstrapping`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aemia.nets.cam import classifier_cam, normalise_cams
from aemia.nets.cam_unet import CamGuidedUNet

__all__ = ["HybridSegLoss", "class_activation_map", "expand_input_channels", "init_from_coarse", "nine_crop_boxes",
           "nine_crop_probs", "rank_loss", "rank_top_k", "soft_dice_per_class"]


def rank_top_k(height: int, width: int, k_ref: int = 30, ref_size: int = 224) -> int:
    """k of the rank loss: ``k_ref`` at ``ref_size``² pixels, scaled by the pixel count (at least 1)."""
    return max(1, int(round(k_ref * height * width / float(ref_size * ref_size))))


def rank_loss(fg_prob: torch.Tensor, target: torch.Tensor, k: int, margin: float = 0.3) -> torch.Tensor:
    """MB-DCNN rank loss on foreground probabilities ``fg_prob`` (N, *S) against binary ``target`` (N, *S).

    Per image: hard negatives = the k background pixels with the highest probability, hard positives = the k
    foreground pixels with the lowest; loss = mean over the k×k pairs of max(0, p_neg − p_pos + margin).
    A class with fewer than k pixels contributes all of them; images lacking either class are skipped; the
    result is the mean over the remaining images (0 if none).
    """
    if fg_prob.shape != target.shape:
        raise ValueError(f"probability shape {tuple(fg_prob.shape)} differs from target shape {tuple(target.shape)}")
    p = fg_prob.float().flatten(1)
    t = target.flatten(1) > 0
    k = int(min(k, p.shape[1]))
    if k < 1:
        raise ValueError("rank loss needs k >= 1")
    neg = torch.where(~t, p, torch.full_like(p, -math.inf)).topk(k, dim=1, largest=True).values
    pos = torch.where(t, p, torch.full_like(p, math.inf)).topk(k, dim=1, largest=False).values
    neg_ok, pos_ok = torch.isfinite(neg), torch.isfinite(pos)
    neg, pos = torch.where(neg_ok, neg, torch.zeros_like(neg)), torch.where(pos_ok, pos, torch.zeros_like(pos))
    pairs = torch.relu(neg[:, :, None] - pos[:, None, :] + margin)
    valid = (neg_ok[:, :, None] & pos_ok[:, None, :]).float()
    count = valid.sum((1, 2))
    per_image = (pairs * valid).sum((1, 2)) / count.clamp_min(1.0)
    used = count > 0
    if not bool(used.any()):
        return p.sum() * 0.0
    return per_image[used].mean()


def soft_dice_per_class(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice (2|P∩G| + s) / (|P| + |G| + s) per image and class: (N, K) from probs (N, K, *S), labels (N, *S)."""
    one_hot = F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = tuple(range(2, probs.ndim))
    inter = (probs * one_hot).sum(dims)
    denom = probs.sum(dims) + one_hot.sum(dims)
    return (2.0 * inter + smooth) / (denom + smooth)


class HybridSegLoss(nn.Module):
    """Dice (mean of background and foreground soft Dice on the softmax) + ``rank_weight`` × :func:`rank_loss`.

    ``k = None`` scales the paper's k = 30 at 224² to the input size (:func:`rank_top_k`).
    """

    def __init__(self, rank_weight: float = 0.05, margin: float = 0.3, k: int | None = None, k_ref: int = 30,
                 ref_size: int = 224, smooth: float = 1e-5) -> None:
        super().__init__()
        self.rank_weight, self.margin, self.k, self.k_ref, self.ref_size, self.smooth = (
            rank_weight, margin, k, k_ref, ref_size, smooth)

    def dice_part(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(1)
        return 1.0 - soft_dice_per_class(probs, target, self.smooth).mean()

    def rank_part(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(1)
        k = self.k if self.k is not None else rank_top_k(int(logits.shape[-2]), int(logits.shape[-1]), self.k_ref,
                                                         self.ref_size)
        return rank_loss(probs[:, 1], target, k, self.margin)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 2:
            raise ValueError(f"the hybrid loss is for two classes (background, lesion); got {logits.shape[1]}")
        loss = self.dice_part(logits, target)
        if self.rank_weight:
            loss = loss + self.rank_weight * self.rank_part(logits, target)
        return loss


# ============================================================================================ networks


def init_from_coarse(enhanced: CamGuidedUNet, coarse: nn.Module) -> list[str]:
    """Copy every Coarse-SN weight into Enhanced-SN; returns the keys left at their initialisation (``inject.*``).
    Raises ``ValueError`` if the two networks differ anywhere else."""
    src = coarse.state_dict()
    dst = enhanced.state_dict()
    unexpected = [k for k in src if k not in dst]
    mismatched = [k for k in src if k in dst and tuple(src[k].shape) != tuple(dst[k].shape)]
    if unexpected or mismatched:
        raise ValueError(f"Coarse-SN does not fit Enhanced-SN: unexpected {unexpected[:3]}, "
                         f"mismatched {mismatched[:3]}")
    missing = [k for k in dst if k not in src]
    enhanced.load_state_dict(src, strict=False)
    return missing


def _first_conv(model: nn.Module, in_channels: int) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == in_channels:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    raise ValueError(f"no Conv2d with {in_channels} input channels in {type(model).__name__}")


def expand_input_channels(classifier: nn.Module, extra: int = 1) -> nn.Module:
    """A copy of a classifier taking ``extra`` more input channels; each new input filter of the first conv is the
    mean of the existing filters (MB-DCNN's RGB → RGB + mask extension). The original model is left unchanged."""
    old_in = int(getattr(classifier, "in_channels"))
    model = copy.deepcopy(classifier)
    parent, attr, conv = _first_conv(model, old_in)
    new = nn.Conv2d(old_in + extra, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        w = conv.weight
        new.weight.copy_(torch.cat([w, w.mean(1, keepdim=True).expand(-1, extra, *w.shape[2:])], dim=1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, attr, new.to(w.device))
    model.in_channels = old_in + extra
    if isinstance(getattr(model, "config", None), dict):
        model.config = {**model.config, "in_channels": old_in + extra}
    return model


@torch.no_grad()
def class_activation_map(classifier: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CAM of the predicted class (Zhou et al. 2016, as MB-DCNN computes it) and the class probabilities.

    CAM = Σ_k w_{c,k} F_k with F the last feature maps and w the FC weights of the argmax class c, divided by its
    positive maximum (max of ReLU(CAM)); an image whose CAM has no positive value gets an all-zero map.
    Returns (cam (N, 1, h, w) float32 at the feature-map resolution, probs (N, K)). Runs in eval mode, fp32.
    """
    was_training = classifier.training
    classifier.eval()
    try:
        cam, logits = classifier_cam(classifier, x)
    finally:
        classifier.train(was_training)
    return normalise_cams(cam, spatial_dims=cam.ndim - 2, keep_negative=True), logits.softmax(1)


def nine_crop_boxes(size: Sequence[int], crop_fraction: float = 0.875) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the 9 crops: side round(fraction·S), corners at {0, (S−c)//2, S−c}²."""
    h, w = int(size[0]), int(size[1])
    ch, cw = max(1, int(round(crop_fraction * h))), max(1, int(round(crop_fraction * w)))
    tops = (0, (h - ch) // 2, h - ch)
    lefts = (0, (w - cw) // 2, w - cw)
    return [(t, left, ch, cw) for t in tops for left in lefts]


@torch.no_grad()
def nine_crop_probs(model: nn.Module, x: torch.Tensor, crop_fraction: float = 0.875,
                    batch_size: int = 32) -> torch.Tensor:
    """Mean softmax of ``model`` over the 9 crops of :func:`nine_crop_boxes`, each resized back to the input
    size (bilinear). ``x`` (N, C, H, W) → (N, K) float32 on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    size = tuple(x.shape[2:])
    total: torch.Tensor | None = None
    for top, left, ch, cw in nine_crop_boxes(size, crop_fraction):
        parts = []
        for start in range(0, x.shape[0], batch_size):
            crop = x[start : start + batch_size, :, top : top + ch, left : left + cw].to(device).float()
            if (ch, cw) != size:
                crop = F.interpolate(crop, size=size, mode="bilinear", align_corners=False)
            parts.append(model(crop).float().softmax(1).cpu())
        probs = torch.cat(parts)
        total = probs if total is None else total + probs
    assert total is not None
    return total / 9.0
