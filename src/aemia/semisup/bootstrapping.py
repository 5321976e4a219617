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

Modules: :mod:`aemia.semisup.mbdcnn_nets` (losses, networks, CAM, 9-crop), :mod:`aemia.semisup.mbdcnn_data`
(cases, guided data set, folds), :mod:`aemia.semisup.mbdcnn_report` (summaries, per-case table, figure) and
this module (the recipe and the staged run).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aemia.errors import InputError
from aemia.nets.cam_unet import resize_map
from aemia.nets.registry import create_model
from aemia.runs.init import init_weights
from aemia.runs.folder import RunFolder
from aemia.semisup.mbdcnn_data import GuidedArrayDataset, load_cases
from aemia.semisup.mbdcnn_nets import (HybridSegLoss, class_activation_map, expand_input_channels, init_from_coarse,
                                       nine_crop_probs)
from aemia.semisup.mbdcnn_report import csv_text, figure, headline, per_case_rows, summarise_predictions
from aemia.train.data import ArrayDataset, AugmentConfig, EpochDataset
from aemia.train.trainer import TrainConfig, Trainer
from aemia.utils.io import write_text_atomic

__all__ = ["STAGES", "MBDCNNConfig", "run_mbdcnn"]

STAGES = ("coarse", "plain_cls", "mask_cn", "enhanced", "coarse_continued")


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
    init: str | None = None  # Coarse-SN's start: a run folder, checkpoint or shipped model (universal)
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
    folder = RunFolder(run_dir)
    train_ids, test_ids = [str(i) for i in train_ids], [str(i) for i in test_ids]
    if not train_ids or not test_ids:
        raise InputError(run_dir, "MB-DCNN needs training and test cases")
    if set(train_ids) & set(test_ids):
        raise InputError(run_dir, "training and test cases overlap")
    if not resume and folder.metrics_path.exists():
        raise InputError(run_dir, "run folder already holds an MB-DCNN run: pass --resume, or choose a new --run")
    tr = load_cases(cfg.dataset, cfg.size, train_ids)
    te = load_cases(cfg.dataset, cfg.size, test_ids)
    pos = _positive_index(tr.classes, cfg.positive_class)
    n_classes = len(tr.classes)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder.save_config({"method": "MB-DCNN", **asdict(cfg)})
    folder.save_splits({"dataset": cfg.dataset, "train": train_ids, "test": test_ids})
    stages = _Stage(run_dir, resume)
    aug = AugmentConfig()
    seg_loss = cfg.hybrid_loss()

    # 1. Coarse-SN (= the plain segmentation baseline)
    torch.manual_seed(cfg.seed)
    coarse = create_model("unet", 2, 3, 2, features=cfg.seg_features)
    if cfg.init:
        init_weights(coarse, cfg.init)
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
    folder.save_metrics(metrics)
    write_text_atomic(folder.per_case_path, csv_text(rows))
    if cfg.figure_cases > 0:
        figure(folder.figures / "mbdcnn.png", te, seg, te_masks, te_cams, jac, probs["mask_guided"], pos,
                cfg.figure_cases)
    return {**metrics, "per_case": rows}

