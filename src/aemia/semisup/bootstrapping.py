"""MB-DCNN: mutual bootstrapping of lesion segmentation and classification.

Xie, Zhang, Xia, Shen, "A Mutual Bootstrapping Model for Automated Skin Lesion Segmentation and
Classification", IEEE TMI 2020 (code ``YtongXie/MB-DCNN``; facts in METHODS.md §7.2). Three networks,
trained one after the other:

1. **Coarse-SN**: a segmentation network trained with the hybrid loss. Here a U-Net
   (:class:`aemia.nets.unet.UNet`) instead of DeepLabv3+/Xception; it is also the plain segmentation baseline.
2. **Mask-CN**: a classifier fed RGB + the coarse mask (4 input channels). The original extends an ImageNet
   conv1 by the mean of its RGB filters; :func:`expand_input_channels` does exactly that for any 3-channel
   classifier. The coarse masks are Coarse-SN's argmax (binary, as ``generate_Coarse_mask.py`` saves them),
   averaged over flips first (the original averages 6 rotations/flips).
3. **Enhanced-SN**: the segmentation network with Mask-CN's class activation map (CAM of the predicted class
   from the last conv maps and the FC weights, divided by its positive maximum) concatenated at the bottleneck,
   followed by a 1×1 conv back to the bottleneck width (:class:`CamGuidedUNet`); initialised from Coarse-SN.

Segmentation loss (:class:`HybridSegLoss`, ``net/loss.py``): mean of background and foreground soft Dice on the
softmax (smooth 1e-5) + 0.05 × rank loss (:func:`rank_loss`: per image the k highest-probability background
pixels and the k lowest-probability foreground pixels, mean of max(0, p_neg − p_pos + 0.3) over the k×k pairs;
k = 30 at 224², scaled by the pixel count). Classification: cross-entropy; at test time the mean softmax over
9 crops (:func:`nine_crop_probs`).

Paper recipe (:meth:`MBDCNNConfig.paper`, ``train_*.py``): Adam with poly(0.9) decay, lr 1e-4 Coarse-SN and
Mask-CN, 5e-5 Enhanced-SN, batch 16 / 32 / 16, 224², 500 epochs for each segmentation net, 50,001 iterations for
Mask-CN. The CPU preset (:meth:`MBDCNNConfig.cpu`, the defaults) trains from scratch (no ImageNet weights),
so its rates are 10× larger, keeping the paper's Enhanced-SN : Coarse-SN ratio of 1/2, and its epochs are few.

Choices of this implementation (documented where they differ from the original):

* Soft Dice is (2|P∩G| + s) / (|P| + |G| + s) per image and class (the original puts s in the denominator
  only, which scores an empty class 0). The rank loss skips an image without background or foreground pixels
  and uses min(k, count) pixels when a class has fewer than k (the original pads with zeros).
* CAMs for Enhanced-SN training are computed once per training image (un-augmented image + coarse mask), stored
  at image resolution and flipped/rotated together with the image; the original recomputes them on each
  augmented batch. They are resized to the bottleneck inside the network (area averaging).
* 9-crop test-time averaging: crop side round(0.875·S), top-left corners at {0, (S−c)//2, S−c}² (4 corners,
  4 edge midpoints, centre), each crop resized back to S×S (bilinear) before the classifier; the coarse-mask
  channel is cropped with the image. The original pre-cropped 9 crops and ran Coarse-SN on each.
* Mask-CN starts from scratch by default (``mask_cn_init="scratch"``) so that it and the plain classifier get
  the same budget; ``"plain"`` initialises it from the trained plain classifier via :func:`expand_input_channels`
  (the paper's transfer route; more total training than the plain classifier).
* The 1×1 injection conv gets PyTorch's default initialisation (``inject_init="random"``, as a new layer in the
  original); ``"identity"`` starts it as the identity on the bottleneck features with a small random CAM column,
  so that Enhanced-SN starts as Coarse-SN up to that small CAM weight (in short CPU runs on PH2 the CAM column
  then barely moves).
* Diagnostics beyond the paper: ``jaccard.enhanced_cam_zeroed`` scores Enhanced-SN with the CAM replaced by
  zeros (how much it relies on the CAM), and ``continued_control`` fine-tunes Coarse-SN for the Enhanced-SN
  budget without any CAM (``jaccard.coarse_continued``), which separates the CAM's effect from more training.
* Segmentation is scored at the working resolution (masks resized with nearest neighbour).
* Every stage trains without a validation split; its last epoch is the stage's model.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aemia.errors import InputError
from aemia.nets.cam import classifier_cam, normalise_cams
from aemia.nets.cam_unet import CamGuidedUNet, resize_map
from aemia.nets.registry import create_model
from aemia.semisup.run_config import write_method_config
from aemia.train.data import ArrayDataset, AugmentConfig, EpochDataset, augment, sample_rng
from aemia.train.trainer import TrainConfig, Trainer
from aemia.utils.io import save_figure, write_json_atomic, write_text_atomic

__all__ = [
    "CamGuidedUNet", "GuidedArrayDataset", "HybridSegLoss", "MBDCNNConfig", "class_activation_map",
    "expand_input_channels", "init_from_coarse", "nine_crop_boxes", "nine_crop_probs", "rank_loss", "rank_top_k",
    "case_table", "load_cases", "run_mbdcnn", "soft_dice_per_class", "stratified_folds",
]

STAGES = ("coarse", "plain_cls", "mask_cn", "enhanced", "coarse_continued")


# ============================================================================================ losses


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
    import copy

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


# ============================================================================================ data


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


# ============================================================================================ config


@dataclass
class MBDCNNConfig:
    """MB-DCNN recipe. Defaults = the CPU preset (:meth:`cpu`); :meth:`paper` = the published recipe."""

    dataset: str = "ph2"
    size: int = 128
    seg_features: list[int] = field(default_factory=lambda: [16, 16, 32, 64, 128])
    cls_features: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    cls_blocks: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    epochs_seg: int = 25
    epochs_cls: int = 20
    epochs_enh: int = 10
    batch_seg: int = 8
    batch_cls: int = 16
    batch_enh: int = 8
    lr_seg: float = 1e-3
    lr_cls: float = 1e-3
    lr_enh: float = 5e-4
    optimizer: str = "adam"
    schedule: str = "poly"
    rank_weight: float = 0.05
    rank_margin: float = 0.3
    rank_k_ref: int = 30
    rank_ref_size: int = 224
    dice_smooth: float = 1e-5
    crop_fraction: float = 0.875
    inject_init: str = "random"  # random (paper: a new layer) | identity (starts as Coarse-SN)
    mask_cn_init: str = "scratch"  # scratch | plain
    mask_tta: bool = True  # flip-averaged Coarse-SN output for the guide masks
    continued_control: bool = False  # also fine-tune Coarse-SN without CAM for the Enhanced-SN budget
    positive_class: str | None = None  # default: "melanoma" if present, else the last class
    seed: int = 0
    amp: str = "auto"
    progress: bool = True
    n_bootstrap: int = 1000
    figure_cases: int = 4

    def __post_init__(self) -> None:
        if self.mask_cn_init not in ("scratch", "plain"):
            raise ValueError(f"mask_cn_init must be scratch or plain, got {self.mask_cn_init!r}")
        if self.inject_init not in ("identity", "random"):
            raise ValueError(f"inject_init must be identity or random, got {self.inject_init!r}")
        if min(self.epochs_seg, self.epochs_cls, self.epochs_enh) < 1:
            raise ValueError("every stage needs at least one epoch")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError("crop_fraction must be in (0, 1]")
        m = 2 ** (len(self.seg_features) - 1)
        if self.size % m:
            raise ValueError(f"size {self.size} must be divisible by {m} (2^depth of the segmentation U-Net)")

    @classmethod
    def cpu(cls, **overrides: Any) -> "MBDCNNConfig":
        """2-core CPU preset: 128 px, width-16 U-Net and ResNet, from scratch, a few epochs per stage."""
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> "MBDCNNConfig":
        """The published recipe's numbers on our networks: 224², Adam 1e-4 / 1e-4 / 5e-5 with poly(0.9), batch
        16 / 32 / 16, 500 epochs per segmentation net, Mask-CN 50,001 iterations × 32 ≈ 480 epochs of ISIC-2017's
        ~3,320 training images. (Xception/DeepLabv3+ are replaced by wider U-Net/ResNet.)"""
        base: dict[str, Any] = dict(size=224, seg_features=[32, 64, 128, 256, 512], cls_features=[64, 128, 256, 512],
                                    cls_blocks=[2, 2, 2, 2], epochs_seg=500, epochs_cls=480, epochs_enh=500,
                                    batch_seg=16, batch_cls=32, batch_enh=16, lr_seg=1e-4, lr_cls=1e-4, lr_enh=5e-5)
        base.update(overrides)
        return cls(**base)

    def train_config(self, stage: str) -> TrainConfig:
        epochs, batch, lr = {
            "coarse": (self.epochs_seg, self.batch_seg, self.lr_seg),
            "plain_cls": (self.epochs_cls, self.batch_cls, self.lr_cls),
            "mask_cn": (self.epochs_cls, self.batch_cls, self.lr_cls),
            "enhanced": (self.epochs_enh, self.batch_enh, self.lr_enh),
            "coarse_continued": (self.epochs_enh, self.batch_enh, self.lr_enh),
        }[stage]
        return TrainConfig(epochs=epochs, batch_size=batch, lr=lr, optimizer=self.optimizer, schedule=self.schedule,
                           deep_supervision=False, seed=self.seed, amp=self.amp, progress=self.progress)

    def hybrid_loss(self) -> HybridSegLoss:
        return HybridSegLoss(self.rank_weight, self.rank_margin, None, self.rank_k_ref, self.rank_ref_size,
                             self.dice_smooth)


# ============================================================================================ pipeline


@dataclass
class _Data:
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


def load_cases(dataset: str, size: int, ids: Sequence[str] | None = None) -> _Data:
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
    data = _Data(np.concatenate(xs), (np.concatenate(ys) > 0).astype(np.uint8), np.concatenate(ts), all_ids,
                 list(ds.classes))
    if ids is None:
        return data
    index = {cid: i for i, cid in enumerate(data.ids)}
    unknown = [c for c in ids if c not in index]
    if unknown:
        raise InputError(None, f"case ids not in '{dataset}': {', '.join(unknown[:5])}")
    sel = [index[c] for c in ids]
    return _Data(data.x[sel], data.y[sel], data.t[sel], [data.ids[i] for i in sel], data.classes)


def _predict(model: nn.Module, x: np.ndarray | torch.Tensor, tta: bool = False, batch_size: int = 32) -> torch.Tensor:
    from aemia.nets.predict import predict_probs

    xt = torch.as_tensor(x)
    model.eval()
    return torch.cat([predict_probs(model, xt[s : s + batch_size], tta=tta).cpu()
                      for s in range(0, xt.shape[0], batch_size)])


def _cams(classifier: nn.Module, x4: np.ndarray, size: int, batch_size: int = 32) -> np.ndarray:
    """CAMs of ``classifier`` on (N, 4, S, S) inputs, resized to the image (bilinear): (N, 1, S, S) float32."""
    out = []
    device = next(classifier.parameters()).device
    for s in range(0, x4.shape[0], batch_size):
        cam, _ = class_activation_map(classifier, torch.as_tensor(x4[s : s + batch_size]).to(device))
        out.append(resize_map(cam, (size, size)).cpu())
    return torch.cat(out).numpy().astype(np.float32)


class _Stage:
    """Train one stage with the shared Trainer, or reuse its finished checkpoint when resuming."""

    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.run_dir, self.resume = run_dir, resume
        self.seconds: dict[str, float] = {}

    def fit(self, name: str, model: nn.Module, train_set: EpochDataset, tcfg: TrainConfig, task: str,
            loss: nn.Module | None = None) -> nn.Module:
        from aemia.nets.checkpoint import load_weights

        stage_dir = self.run_dir / name
        best = stage_dir / "checkpoints" / "best.safetensors"
        last = stage_dir / "checkpoints" / "last.safetensors"
        t0 = time.perf_counter()
        if self.resume and best.exists():
            load_weights(model, best, strict=True)
        else:
            if last.exists() and not self.resume:
                raise InputError(stage_dir, "stage folder already holds a training run: pass --resume to continue it, "
                                            "or choose a new --run")
            trainer = Trainer(model, train_set, None, tcfg, stage_dir, task=task, loss=loss)
            trainer.fit(resume=self.resume and last.exists())
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        return model.eval()


def _positive_index(classes: list[str], name: str | None) -> int:
    if name is None:
        return classes.index("melanoma") if "melanoma" in classes else len(classes) - 1
    if name not in classes:
        raise InputError(None, f"positive class {name!r} is not one of {classes}")
    return classes.index(name)


def run_mbdcnn(cfg: MBDCNNConfig, run_dir: str | Path, train_ids: Sequence[str], test_ids: Sequence[str],
               resume: bool = False) -> dict[str, Any]:
    """Train Coarse-SN, the plain classifier, Mask-CN and Enhanced-SN on ``train_ids`` and evaluate on ``test_ids``.

    Writes into ``run_dir``: ``config.yaml``, ``splits.json``, one Trainer folder per stage (``coarse/``,
    ``plain_cls/``, ``mask_cn/``, ``enhanced/``, optionally ``coarse_continued/``) each with
    ``checkpoints/best.safetensors`` + ``best.json``, ``metrics.json``, ``per_case.csv`` and
    ``figures/mbdcnn.png``. Returns the metrics (as in ``metrics.json``) plus ``"per_case"``: one dict per test
    case (Jaccard of each segmentation, class probabilities of each classifier). With ``resume``, finished
    stages are reused and an interrupted one continues from its last epoch.
    """
    run_dir = Path(run_dir)
    train_ids, test_ids = [str(i) for i in train_ids], [str(i) for i in test_ids]
    if not train_ids or not test_ids:
        raise InputError(run_dir, "MB-DCNN needs training and test cases")
    if set(train_ids) & set(test_ids):
        raise InputError(run_dir, "training and test cases overlap")
    if not resume and (run_dir / "metrics.json").exists():
        raise InputError(run_dir, "run folder already holds an MB-DCNN run: pass --resume, or choose a new --run")
    tr = load_cases(cfg.dataset, cfg.size, train_ids)
    te = load_cases(cfg.dataset, cfg.size, test_ids)
    pos = _positive_index(tr.classes, cfg.positive_class)
    n_classes = len(tr.classes)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_method_config(run_dir, {"method": "MB-DCNN", **asdict(cfg)})
    write_json_atomic(run_dir / "splits.json", {"dataset": cfg.dataset, "train": train_ids, "test": test_ids})
    stages = _Stage(run_dir, resume)
    aug = AugmentConfig()
    seg_loss = cfg.hybrid_loss()

    # 1. Coarse-SN (= the plain segmentation baseline)
    torch.manual_seed(cfg.seed)
    coarse = create_model("unet", 2, 3, 2, features=cfg.seg_features)
    coarse = stages.fit("coarse", coarse, ArrayDataset(tr.x, tr.y, augment=aug, seed=cfg.seed),
                        cfg.train_config("coarse"), "segmentation", seg_loss)

    # plain classifier (image only): the classification baseline
    torch.manual_seed(cfg.seed + 1)
    plain = create_model("resnet", 2, 3, n_classes, features=cfg.cls_features, blocks=cfg.cls_blocks)
    plain = stages.fit("plain_cls", plain, ArrayDataset(tr.x, targets=tr.t, augment=aug, seed=cfg.seed),
                       cfg.train_config("plain_cls"), "classification")

    # 2. Mask-CN on RGB + coarse mask
    def guide_masks(x: np.ndarray) -> np.ndarray:
        return (_predict(coarse, x, tta=cfg.mask_tta).argmax(1, keepdim=True)).numpy().astype(np.float32)

    tr_masks, te_masks = guide_masks(tr.x), guide_masks(te.x)
    torch.manual_seed(cfg.seed + 1)
    if cfg.mask_cn_init == "plain":
        mask_cn = expand_input_channels(plain)
    else:
        mask_cn = create_model("resnet", 2, 4, n_classes, features=cfg.cls_features, blocks=cfg.cls_blocks)
    mask_set = GuidedArrayDataset(tr.x, tr_masks, targets=tr.t, augment=aug, seed=cfg.seed)
    mask_cn = stages.fit("mask_cn", mask_cn, mask_set, cfg.train_config("mask_cn"), "classification")

    # 3. Enhanced-SN with Mask-CN's CAM at the bottleneck, initialised from Coarse-SN
    tr4, te4 = np.concatenate([tr.x, tr_masks], 1), np.concatenate([te.x, te_masks], 1)
    tr_cams, te_cams = _cams(mask_cn, tr4, cfg.size), _cams(mask_cn, te4, cfg.size)
    torch.manual_seed(cfg.seed + 2)
    enhanced = create_model("unet-cam", 2, 3, 2, features=cfg.seg_features, inject_init=cfg.inject_init)
    init_from_coarse(enhanced, coarse)  # type: ignore[arg-type]
    enh_set = GuidedArrayDataset(tr.x, tr_cams, labels=tr.y, augment=aug, seed=cfg.seed)
    enhanced = stages.fit("enhanced", enhanced, enh_set, cfg.train_config("enhanced"), "segmentation", seg_loss)
    continued = None
    if cfg.continued_control:  # same extra budget without the CAM: is a gain the CAM's or just more training?
        continued = create_model("unet", 2, 3, 2, features=cfg.seg_features)
        continued.load_state_dict(coarse.state_dict())
        continued = stages.fit("coarse_continued", continued, ArrayDataset(tr.x, tr.y, augment=aug, seed=cfg.seed),
                               cfg.train_config("coarse_continued"), "segmentation", seg_loss)

    # ---------------------------------------------------------------------------- evaluation on test_ids
    from aemia.evaluate.metrics import iou

    seg = {"coarse": _predict(coarse, te.x).argmax(1).numpy(),
           "enhanced": _predict(enhanced, np.concatenate([te.x, te_cams], 1)).argmax(1).numpy(),
           "enhanced_cam_zeroed": _predict(enhanced, np.concatenate([te.x, 0 * te_cams], 1)).argmax(1).numpy()}
    if continued is not None:
        seg["coarse_continued"] = _predict(continued, te.x).argmax(1).numpy()
    jac = {k: np.array([iou(p, g) for p, g in zip(v, te.y)]) for k, v in seg.items()}
    probs = {"plain": _predict(plain, te.x).numpy(),
             "plain_9crop": nine_crop_probs(plain, torch.as_tensor(te.x), cfg.crop_fraction).numpy(),
             "mask_guided": _predict(mask_cn, te4).numpy(),
             "mask_guided_9crop": nine_crop_probs(mask_cn, torch.as_tensor(te4), cfg.crop_fraction).numpy()}
    metrics = summarise_predictions(te.t, jac, probs, pos, cfg.n_bootstrap, cfg.seed)
    metrics = {"method": "MB-DCNN (Xie et al., TMI 2020)", "dataset": cfg.dataset, "size": cfg.size,
               "n_train": len(train_ids), "n_test": len(test_ids), "classes": tr.classes,
               "positive_class": tr.classes[pos], **metrics, "seconds": stages.seconds,
               "checkpoints": {s: f"{s}/checkpoints/best.safetensors" for s in stages.seconds}}
    metrics["headline"] = headline(metrics)
    rows = per_case_rows(te.ids, te.t, tr.classes, jac, probs)
    write_json_atomic(run_dir / "metrics.json", metrics)
    write_text_atomic(run_dir / "per_case.csv", _csv(rows))
    if cfg.figure_cases > 0:
        _figure(run_dir / "figures" / "mbdcnn.png", te, seg, te_masks, te_cams, jac, probs["mask_guided"], pos,
                cfg.figure_cases)
    return {**metrics, "per_case": rows}


# ============================================================================================ summaries


def _auc_ci(y: np.ndarray, scores: np.ndarray, n_boot: int, seed: int, metric: Any = None) -> dict[str, Any]:
    from aemia.evaluate.metrics import auc, bootstrap_metric_ci, ci_dict

    fn = metric or auc
    try:
        return ci_dict(bootstrap_metric_ci(y, scores, fn, n_resamples=n_boot, seed=seed))
    except ValueError:  # a single class among the cases: AUC undefined
        return {"mean": math.nan, "ci": [math.nan, math.nan], "n": int(len(y)), "n_excluded": int(len(y))}


def summarise_predictions(targets: np.ndarray, jaccard: dict[str, np.ndarray], probs: dict[str, np.ndarray],
                          pos: int, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Jaccard (per-image mean, bootstrap CI) per segmentation arm and the paired enhanced − coarse difference;
    positive-class-vs-rest AUC and macro one-vs-rest AUC per classifier arm with bootstrap CIs (cases resampled),
    the paired mask-guided − plain differences, and accuracy."""
    from aemia.evaluate.metrics import auc, bootstrap_ci, ci_dict

    y = np.asarray(targets)
    out: dict[str, Any] = {"jaccard": {k: ci_dict(bootstrap_ci(v, n_boot, seed)) for k, v in jaccard.items()}}
    if "enhanced" in jaccard and "coarse" in jaccard:
        diff = jaccard["enhanced"] - jaccard["coarse"]
        out["jaccard"]["enhanced_minus_coarse"] = ci_dict(bootstrap_ci(diff, n_boot, seed))
    if "coarse_continued" in jaccard and "enhanced" in jaccard:
        out["jaccard"]["enhanced_minus_coarse_continued"] = ci_dict(
            bootstrap_ci(jaccard["enhanced"] - jaccard["coarse_continued"], n_boot, seed))
    out["auc_melanoma"] = {k: _auc_ci((y == pos).astype(int), p[:, pos], n_boot, seed) for k, p in probs.items()}
    out["auc_macro"] = {k: _auc_ci(y, p, n_boot, seed) for k, p in probs.items()}
    out["accuracy"] = {k: float((p.argmax(1) == y).mean()) for k, p in probs.items()}
    pairs = [("plain", "mask_guided"), ("plain", "mask_guided_9crop"), ("plain_9crop", "mask_guided_9crop")]
    for a, b in pairs:
        if a in probs and b in probs:
            key = f"{b}_minus_{a}"
            bin_scores = np.stack([probs[a][:, pos], probs[b][:, pos]], 1)
            out["auc_melanoma"][key] = _auc_ci((y == pos).astype(int), bin_scores, n_boot, seed,
                                               lambda yy, s: auc(yy, s[:, 1]) - auc(yy, s[:, 0]))
            out["auc_macro"][key] = _auc_ci(y, np.stack([probs[a], probs[b]], 1), n_boot, seed,
                                            lambda yy, s: auc(yy, s[:, 1]) - auc(yy, s[:, 0]))
    return out


def headline(metrics: dict[str, Any]) -> str:
    """One line: Jaccard coarse → enhanced and positive-class AUC plain → mask-guided (9-crop)."""
    j, a = metrics["jaccard"], metrics["auc_melanoma"]

    def f(d: dict[str, Any]) -> str:
        lo, hi = d["ci"]
        return f"{d['mean']:.3f} [{lo:.3f}, {hi:.3f}]"

    name = metrics.get("positive_class", "melanoma")
    return (f"Jaccard coarse {f(j['coarse'])} -> enhanced {f(j['enhanced'])}; {name} AUC plain {f(a['plain'])} -> "
            f"mask-guided {f(a['mask_guided'])}, 9-crop {f(a['mask_guided_9crop'])} (n = {metrics.get('n_test')})")


def per_case_rows(ids: Sequence[str], targets: np.ndarray, classes: list[str], jaccard: dict[str, np.ndarray],
                  probs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    for i, cid in enumerate(ids):
        row: dict[str, Any] = {"id": cid, "target": int(targets[i]), "class": classes[int(targets[i])]}
        for k, v in jaccard.items():
            row[f"jaccard_{k}"] = round(float(v[i]), 6)
        for k, p in probs.items():
            for c in range(p.shape[1]):
                row[f"p_{k}_{c}"] = round(float(p[i, c]), 6)
        rows.append(row)
    return rows


def read_per_case(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``per_case.csv`` with numbers parsed (``id`` and ``class`` stay strings)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (v if k in ("id", "class") else (int(v) if k == "target" else float(v))) for k, v in r.items()}
            for r in rows]


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["id"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _figure(path: Path, te: _Data, seg: dict[str, np.ndarray], masks: np.ndarray, cams: np.ndarray,
            jac: dict[str, np.ndarray], p_mask: np.ndarray, pos: int, n_cases: int) -> None:
    """Rows = test cases with the largest Jaccard change; columns image, coarse mask, CAM, enhanced mask, truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-np.abs(jac["enhanced"] - jac["coarse"]), kind="stable")[:n_cases]
    cols = ["image", "coarse mask", "CAM (Mask-CN)", "enhanced mask", "truth"]
    fig, axes = plt.subplots(len(order), 5, figsize=(11, 2.3 * len(order)), squeeze=False)
    for r, i in enumerate(order):
        img = np.clip(te.x[i].transpose(1, 2, 0), 0, 1)
        panels = [img, seg["coarse"][i], cams[i, 0], seg["enhanced"][i], te.y[i]]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            if c == 2:
                ax.imshow(img)
                ax.imshow(panel, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            elif c == 0:
                ax.imshow(panel)
            else:
                ax.imshow(img)
                ax.contour(panel, levels=[0.5], colors=["yellow" if c != 4 else "lime"], linewidths=1.2)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r][0].set_ylabel(f"{te.ids[i]}\n{te.classes[int(te.t[i])]}", fontsize=8)
        axes[r][1].set_xlabel(f"J {jac['coarse'][i]:.2f}", fontsize=8)
        axes[r][3].set_xlabel(f"J {jac['enhanced'][i]:.2f}", fontsize=8)
        axes[r][2].set_xlabel(f"p({te.classes[pos]}) {p_mask[i, pos]:.2f}", fontsize=8)
    fig.suptitle("MB-DCNN on held-out cases (largest Jaccard change first)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
