"""SSAC: semi-supervised adversarial classification (Xie, Zhang, Xia, MedIA 2019), a small 2D CPU version.

Published facts (``reference/METHODS.md`` §7.1; abstract only, no public code):

* **R**, a reconstruction network built on an adversarial autoencoder (AAE), is trained on the labelled **and**
  the unlabelled images;
* **C**, a supervised classification network, is trained on the labelled images;
* **learnable transition layers** adapt R's encoder representation to C.

MK-SSAC (three SSACs per view for overall appearance, shape and texture patches, over nine planar views of a 3D
nodule, fused) is not built here: the bundled classification sets are 2D images. The §7.1 CPU recipe is
followed: AAE = conv encoder → latent ``z``, conv decoder, a discriminator on ``z`` against a Gaussian prior;
transition layer = a 1×1 conv mapping R-encoder features into C.

**AAE training** (Makhzani et al., "Adversarial Autoencoders", ICLR workshop 2016), per mini-batch:

1. reconstruction phase: encoder + decoder minimise the reconstruction loss (BCE on [0, 1] images, or MSE);
2. regularisation phase: the discriminator ``D`` learns to tell prior samples ``z ~ N(0, σ²I)`` (label 1)
   from codes ``E(x)`` (label 0) (:func:`discriminator_loss`); then the encoder, acting as the generator, is
   updated to fool it with the non-saturating loss ``-log D(E(x))`` (:func:`generator_loss`).

**Networks** (CPU-sized choices; the paper gives none at this scale): R's encoder and C share one level
structure — level 0 at full resolution, each further level halves it with a stride-2 3×3 conv (two conv-BN-ReLU
per level). C's widths are (16, 32, 64) up to 32 px and (16, 32, 64, 128) above; R's are half of those (its
decoder at full resolution is the costly part on a CPU). The encoder's last level is flattened to ``z``
(16-d); the decoder mirrors it (nearest upsampling + convs, logits out); the discriminator is an MLP (64, 64,
LeakyReLU 0.2). C adds, after each of its levels, ``T_l(e_l)`` where ``e_l`` is R's encoder feature map at the
same resolution and ``T_l`` a 1×1 conv (:class:`FusionClassifier`). The transitions are zero-initialised (a
toolkit choice) and created after C's own layers, so at initialisation SSAC computes exactly what "C alone" (the
baseline, same seed) computes; any difference after training comes from R's features.

**Training** (:func:`run_ssac`): phase 1, the AAE on every training image (labelled + unlabelled; Adam 1e-3 for
reconstruction, Adam 2e-4 with β1 = 0.5 for the discriminator and generator steps, the usual GAN setting);
phase 2, C + transitions on the labelled images with cross-entropy (Adam 1e-3, weight decay 1e-4, cosine decay,
flips and ±10% intensity augmentation). R's encoder is frozen by default — the paper adapts R's representation
to C through the transition layers — or fine-tuned at ``encoder_lr_scale`` × the classifier's learning rate
(``encoder="finetune"``); its batch-norm statistics stay those of phase 1 in both cases. The baseline "C alone"
has the same architecture without transitions and the same seed, batches and schedule. The model evaluated is
the last epoch's (no selection on labelled validation data, which a 5%-label setting would not have); the
validation AUC is only logged for the curves.

Phase 1 uses no labels, so a finished run's AAE can be reused by another run on the same data set, size and R
widths (``pretrained_aae``; e.g. other seeds of a benchmark), provided it saw the whole training split.

Outputs of a run folder: ``config.json``, ``splits.json``, ``checkpoints/{aae,ssac,classifier}.safetensors``
(+ ``.json``), ``per_case.csv`` (test probabilities of both models), ``metrics.json`` (test AUC — binary, or
macro one-vs-rest — and accuracy with case-level bootstrap 95% CIs for both models, the paired bootstrap CI of
the AUC difference, the AAE's test reconstruction error and code statistics), ``figures/ssac.png``
(reconstructions, a PCA of the test codes next to prior samples, training curves).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aemia.errors import InputError
from aemia.evaluate import metrics as M
from aemia.nets.checkpoint import read_config, read_state, save_checkpoint
from aemia.train.data import AugmentConfig, augment, sample_rng
from aemia.utils.io import write_json_atomic, write_text_atomic, write_with
from aemia.utils.progress import Bar

ENCODER_MODES = ("frozen", "finetune")
RECON_LOSSES = ("bce", "mse")

# ------------------------------------------------------------------------------------------------ networks


def level_sizes(size: int, n_levels: int) -> list[int]:
    """Spatial size per level: ``size`` then repeated ``ceil(s / 2)`` (3×3 conv, stride 2, padding 1)."""
    sizes = [int(size)]
    for _ in range(n_levels - 1):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def default_widths(size: int) -> tuple[int, ...]:
    """Level widths: three levels up to 32 px, four above (the last level is then 8×8 at 64 px)."""
    return (16, 32, 64) if size <= 32 else (16, 32, 64, 128)


def _level(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


def _levels(in_channels: int, widths: Sequence[int]) -> nn.ModuleList:
    chans = [in_channels, *widths]
    return nn.ModuleList(_level(chans[i], chans[i + 1], 1 if i == 0 else 2) for i in range(len(widths)))


class Encoder(nn.Module):
    """R's encoder: conv levels (full, 1/2, 1/4, ... resolution) then a linear map to the latent code ``z``."""

    def __init__(self, in_channels: int, size: int, widths: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.sizes = level_sizes(size, len(self.widths))
        self.levels = _levels(in_channels, self.widths)
        self.fc = nn.Linear(self.widths[-1] * self.sizes[-1] ** 2, latent_dim)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every level, full resolution first."""
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.features(x)
        return self.fc(torch.flatten(feats[-1], 1)), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]


class Decoder(nn.Module):
    """Mirror of :class:`Encoder`: ``z`` → last level's map → nearest upsampling + convs → image logits."""

    def __init__(self, out_channels: int, size: int, widths: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.sizes = level_sizes(size, len(self.widths))
        self.fc = nn.Sequential(nn.Linear(latent_dim, self.widths[-1] * self.sizes[-1] ** 2), nn.ReLU(inplace=True))
        w = self.widths
        self.ups = nn.ModuleList(_level(w[i], w[i - 1], 1) for i in range(len(w) - 1, 0, -1))
        self.head = nn.Conv2d(self.widths[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.widths[-1], self.sizes[-1], self.sizes[-1])
        for up, s in zip(self.ups, reversed(self.sizes[:-1])):
            h = up(F.interpolate(h, size=(s, s), mode="nearest"))
        return self.head(h)


class Discriminator(nn.Module):
    """MLP on latent codes; one logit per code (high = "drawn from the prior")."""

    def __init__(self, latent_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


class AAE(nn.Module):
    """R: adversarial autoencoder (encoder, decoder, latent discriminator). ``forward`` → (z, image logits)."""

    def __init__(self, in_channels: int, size: int, widths: Sequence[int] | None = None, latent_dim: int = 16,
                 disc_hidden: int = 64) -> None:
        super().__init__()
        widths = tuple(widths) if widths else default_widths(size)
        self.config = {"class": "AAE", "in_channels": in_channels, "size": size, "widths": list(widths),
                       "latent_dim": latent_dim, "disc_hidden": disc_hidden}
        self.latent_dim = latent_dim
        self.encoder = Encoder(in_channels, size, widths, latent_dim)
        self.decoder = Decoder(in_channels, size, widths, latent_dim)
        self.discriminator = Discriminator(latent_dim, disc_hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x)))


class FusionClassifier(nn.Module):
    """C: conv levels like :class:`Encoder`, global average pooling and a linear head.

    With ``r_widths`` (R's encoder widths), a zero-initialised 1×1 conv transition ``T_l`` per fused level adds
    ``T_l(e_l)`` to C's level-``l`` output; ``r_widths=None`` is "C alone". ``fuse_levels`` chooses the levels
    (default: all). The transitions are built after C's layers, so one seed gives C the same weights either way.
    """

    def __init__(self, in_channels: int, n_classes: int, widths: Sequence[int], r_widths: Sequence[int] | None = None,
                 fuse_levels: Sequence[int] | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        self.config = {"class": "FusionClassifier", "in_channels": in_channels, "n_classes": n_classes,
                       "widths": list(widths), "r_widths": list(r_widths) if r_widths else None,
                       "fuse_levels": list(fuse_levels) if fuse_levels is not None else None, "dropout": dropout}
        self.levels = _levels(in_channels, widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(widths[-1], n_classes)
        self.transitions = nn.ModuleDict()
        if r_widths is not None:
            if len(r_widths) != len(widths):
                raise ValueError(f"R has {len(r_widths)} levels and C {len(widths)}: they must match")
            for lvl in (range(len(widths)) if fuse_levels is None else fuse_levels):
                t = nn.Conv2d(int(r_widths[lvl]), widths[lvl], 1)
                nn.init.zeros_(t.weight)
                nn.init.zeros_(t.bias)
                self.transitions[str(lvl)] = t

    def forward(self, x: torch.Tensor, r_features: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if len(self.transitions) and r_features is None:
            raise ValueError("this classifier fuses R's features: pass r_features")
        h = x
        for lvl, level in enumerate(self.levels):
            h = level(h)
            key = str(lvl)
            if r_features is not None and key in self.transitions:
                e = r_features[lvl]
                if e.shape[-2:] != h.shape[-2:]:
                    raise ValueError(f"level {lvl}: R features {tuple(e.shape[-2:])} vs C {tuple(h.shape[-2:])}")
                h = h + self.transitions[key](e)
        return self.fc(self.dropout(torch.flatten(self.pool(h), 1)))


class SSACNet(nn.Module):
    """The SSAC classifier: R's encoder (frozen or fine-tuned) feeding C through the transition layers.

    The encoder's batch-norm layers stay in eval mode (phase-1 statistics) even when the module trains.
    """

    def __init__(self, encoder: Encoder, classifier: FusionClassifier, freeze_encoder: bool = True) -> None:
        super().__init__()
        if not len(classifier.transitions):
            raise ValueError("SSACNet needs a FusionClassifier built with r_widths")
        self.encoder = encoder
        self.classifier = classifier
        self.freeze_encoder = freeze_encoder
        for p in self.encoder.parameters():
            p.requires_grad_(not freeze_encoder)
        self.config = {"class": "SSACNet", "freeze_encoder": freeze_encoder, "classifier": classifier.config}

    def train(self, mode: bool = True) -> "SSACNet":
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                feats = self.encoder.features(x)
        else:
            feats = self.encoder.features(x)
        return self.classifier(x, feats)


# -------------------------------------------------------------------------------------------------- losses


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """BCE on logits against [0, 1] images, or MSE of the sigmoid output; mean over pixels."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "mse":
        return F.mse_loss(torch.sigmoid(logits), target)
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {RECON_LOSSES}")


def discriminator_loss(d_prior: torch.Tensor, d_code: torch.Tensor) -> torch.Tensor:
    """``-log D(z_prior) - log(1 - D(E(x)))`` (logits in): low when D separates prior samples from codes."""
    return (F.binary_cross_entropy_with_logits(d_prior, torch.ones_like(d_prior))
            + F.binary_cross_entropy_with_logits(d_code, torch.zeros_like(d_code)))


def generator_loss(d_code: torch.Tensor) -> torch.Tensor:
    """Non-saturating ``-log D(E(x))``: low when the discriminator takes the codes for prior samples."""
    return F.binary_cross_entropy_with_logits(d_code, torch.ones_like(d_code))


# -------------------------------------------------------------------------------------------------- config


@dataclass
class SSACConfig:
    """One SSAC run. Defaults are CPU-sized choices (the paper's abstract gives no hyper-parameters)."""

    dataset: str = "pneumoniamnist"
    label_fraction: float = 0.05  # labelled share of the training split (labelled_subset, nested per seed)
    size: int | None = None  # working size; None: 28 for *MNIST sets, 64 otherwise
    widths: list[int] | None = None  # C's level widths; None: default_widths(size)
    aae_widths: list[int] | None = None  # R's level widths; None: half of default_widths(size) (R is the costly part)
    latent_dim: int = 16  # AAE code size
    prior_std: float = 1.0  # Gaussian prior N(0, prior_std² I) (Makhzani et al.)
    recon_loss: str = "bce"  # bce | mse
    epochs_aae: int = 20  # phase 1 passes over all training images
    batch_aae: int = 64
    lr_aae: float = 1e-3  # reconstruction phase (Adam)
    lr_disc: float = 2e-4  # discriminator step (Adam, betas 0.5/0.999)
    lr_gen: float = 2e-4  # generator step on the encoder (Adam, betas 0.5/0.999)
    pretrained_aae: str | None = None  # reuse another run's phase 1 (run folder or checkpoint stem), same images
    epochs_cls: int = 40  # phase 2 passes over the labelled images
    batch_cls: int = 32
    lr_cls: float = 1e-3  # Adam, cosine decay to 0
    weight_decay: float = 1e-4
    dropout: float = 0.0
    encoder: str = "frozen"  # frozen | finetune (R's encoder in phase 2)
    encoder_lr_scale: float = 0.1  # finetune: encoder lr = encoder_lr_scale * lr_cls
    fuse_levels: list[int] | None = None  # C levels receiving R features; None: all
    augment: bool = True  # phase 2: flips + ±10% intensity (no 90° rotations)
    max_unlabelled: int | None = None  # cap the unlabelled images used by phase 1 (speed); None: all
    n_boot: int = 1000  # bootstrap resamples for the CIs
    seed: int = 0  # labelled subset, initialisation, batches, prior samples
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label fraction must be in (0, 1], got {self.label_fraction}")
        if self.encoder not in ENCODER_MODES:
            raise ValueError(f"unknown encoder mode {self.encoder!r}; choose one of {ENCODER_MODES}")
        if self.recon_loss not in RECON_LOSSES:
            raise ValueError(f"unknown reconstruction loss {self.recon_loss!r}; choose one of {RECON_LOSSES}")
        if self.epochs_aae < 0 or self.epochs_cls < 1:
            raise ValueError("epochs_aae must be >= 0 and epochs_cls >= 1")

    def working_size(self) -> int:
        return int(self.size) if self.size else (28 if "mnist" in self.dataset else 64)

    def level_widths(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(C's widths, R's widths)."""
        base = default_widths(self.working_size())
        c = tuple(self.widths) if self.widths else base
        r = tuple(self.aae_widths) if self.aae_widths else tuple(max(1, w // 2) for w in base)
        return c, r


# ------------------------------------------------------------------------------------------------ training


def _batches(n: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i:i + batch] for i in range(0, n, batch)]


def train_aae(aae: AAE, images: np.ndarray, cfg: SSACConfig, bar: Bar | None = None) -> list[dict[str, float]]:
    """Phase 1 (Makhzani et al.): per batch a reconstruction, a discriminator and a generator step.

    Returns one record per epoch: mean reconstruction, discriminator and generator losses and the
    discriminator's accuracy on prior samples vs codes (0.5 = codes indistinguishable from the prior).
    """
    rng = np.random.default_rng([cfg.seed, 1])
    gen = torch.Generator().manual_seed(cfg.seed)
    ae_params = list(aae.encoder.parameters()) + list(aae.decoder.parameters())
    opt_ae = torch.optim.Adam(ae_params, lr=cfg.lr_aae)
    opt_d = torch.optim.Adam(aae.discriminator.parameters(), lr=cfg.lr_disc, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(aae.encoder.parameters(), lr=cfg.lr_gen, betas=(0.5, 0.999))
    history: list[dict[str, float]] = []
    aae.train()
    for epoch in range(cfg.epochs_aae):
        sums = np.zeros(4)
        batches = _batches(len(images), cfg.batch_aae, rng)
        for idx in batches:
            x = torch.from_numpy(images[idx])
            # 1. reconstruction phase
            z, logits = aae(x)
            rec = reconstruction_loss(logits, x, cfg.recon_loss)
            opt_ae.zero_grad(set_to_none=True)
            rec.backward()
            opt_ae.step()
            # 2a. regularisation phase: discriminator, prior samples (1) vs codes (0); the codes of this batch
            # from step 1 are reused (one encoder update older) to save a forward pass
            z = z.detach()
            zp = torch.randn(z.shape, generator=gen) * cfg.prior_std
            dp, dc = aae.discriminator(zp), aae.discriminator(z)
            d_loss = discriminator_loss(dp, dc)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            # 2b. regularisation phase: generator (the encoder) fools the discriminator
            g_loss = generator_loss(aae.discriminator(aae.encoder(x)))
            opt_g.zero_grad(set_to_none=True)
            aae.discriminator.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            d_acc = 0.5 * ((dp > 0).float().mean() + (dc <= 0).float().mean())
            sums += np.array([rec.item(), d_loss.item(), g_loss.item(), float(d_acc)]) * len(idx)
        rec_m, d_m, g_m, acc_m = sums / len(images)
        history.append({"epoch": epoch + 1, "recon": float(rec_m), "d_loss": float(d_m), "g_loss": float(g_m),
                        "d_acc": float(acc_m)})
        if bar is not None:
            bar.advance(description=f"phase 1 AAE: recon {rec_m:.4f}, D acc {acc_m:.2f}")
    aae.eval()
    return history


def predict_proba(model: nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Softmax class probabilities ``(N, K)`` in eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(torch.softmax(model(torch.from_numpy(images[i:i + batch])), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def class_scores(probs: np.ndarray) -> np.ndarray:
    """What :func:`aemia.evaluate.metrics.auc` takes: P(class 1) for two classes, else all probabilities."""
    return probs[:, 1] if probs.shape[1] == 2 else probs


def _safe_auc(y: np.ndarray, probs: np.ndarray) -> float:
    try:
        return M.auc(y, class_scores(probs))
    except ValueError:
        return math.nan


def train_classifier(model: nn.Module, images: np.ndarray, targets: np.ndarray, cfg: SSACConfig,
                     val: tuple[np.ndarray, np.ndarray] | None = None, bar: Bar | None = None,
                     name: str = "C") -> list[dict[str, float]]:
    """Phase 2: cross-entropy on the labelled images; same seeded batches and augmentation for every model.

    For an :class:`SSACNet` with ``encoder="finetune"`` the encoder trains at ``encoder_lr_scale`` × ``lr_cls``.
    Returns one record per epoch (training loss and accuracy, validation AUC if ``val`` is given).
    """
    rng = np.random.default_rng([cfg.seed, 2])
    if isinstance(model, SSACNet):
        groups = [{"params": list(model.classifier.parameters()), "lr": cfg.lr_cls}]
        if not model.freeze_encoder:
            groups.append({"params": list(model.encoder.parameters()), "lr": cfg.lr_cls * cfg.encoder_lr_scale})
    else:
        groups = [{"params": list(model.parameters()), "lr": cfg.lr_cls}]
    opt = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    total = cfg.epochs_cls * math.ceil(len(images) / cfg.batch_cls)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    aug = AugmentConfig(flip=True, rot90=False, intensity=0.1) if cfg.augment else None
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs_cls):
        model.train()
        loss_sum, correct = 0.0, 0
        for idx in _batches(len(images), cfg.batch_cls, rng):
            if aug is not None:
                xb = np.stack([augment(images[i], None, sample_rng(cfg.seed, epoch, int(i)), aug)[0] for i in idx])
            else:
                xb = images[idx]
            x, t = torch.from_numpy(xb), torch.from_numpy(targets[idx])
            logits = model(x)
            loss = F.cross_entropy(logits, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == t).sum())
        rec = {"epoch": epoch + 1, "loss": loss_sum / len(images), "train_acc": correct / len(images)}
        if val is not None:
            rec["val_auc"] = _safe_auc(val[1], predict_proba(model, val[0]))
        history.append(rec)
        if bar is not None:
            bar.advance(description=f"phase 2 {name}: loss {rec['loss']:.3f}"
                        + (f", val AUC {rec['val_auc']:.3f}" if val is not None else ""))
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------- evaluation


def classification_metrics(y: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Test AUC (binary, or macro one-vs-rest) and accuracy, each with a case-level bootstrap 95% CI."""
    auc_ci = M.bootstrap_metric_ci(y, class_scores(probs), M.auc, n_resamples=n_boot, seed=seed)
    acc_ci = M.bootstrap_ci((probs.argmax(1) == y).astype(float), n_resamples=n_boot, seed=seed)
    return {"auc": M.ci_dict(auc_ci), "accuracy": M.ci_dict(acc_ci)}


def paired_auc_difference(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_boot: int = 1000,
                          seed: int = 0) -> dict[str, Any]:
    """AUC(a) − AUC(b) with a paired bootstrap CI (the same resampled cases for both models)."""
    k = probs_a.shape[1]
    both = np.concatenate([probs_a, probs_b], axis=1)

    def diff(yy: np.ndarray, s: np.ndarray) -> float:
        return M.auc(yy, class_scores(s[:, :k])) - M.auc(yy, class_scores(s[:, k:]))

    return M.ci_dict(M.bootstrap_metric_ci(y, both, diff, n_resamples=n_boot, seed=seed))


def _latent(aae: AAE, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, dict[str, float]]:
    """Codes of ``images`` and their mean per-pixel reconstruction BCE and MSE."""
    aae.eval()
    zs, bce, mse, n = [], 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch])
            z, logits = aae(x)
            zs.append(z.numpy())
            bce += float(reconstruction_loss(logits, x, "bce")) * len(x)
            mse += float(reconstruction_loss(logits, x, "mse")) * len(x)
            n += len(x)
    return np.concatenate(zs), {"bce": bce / max(n, 1), "mse": mse / max(n, 1)}


# -------------------------------------------------------------------------------------------------- figure


def _montage(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) → one (H, N·W[, 3]) picture."""
    row = np.concatenate(list(images), axis=-1)
    return row[0] if row.shape[0] == 1 else np.moveaxis(row[:3], 0, -1)


def plot_ssac(path: Path, originals: np.ndarray, recons: np.ndarray, z: np.ndarray, y: np.ndarray,
              classes: Sequence[str], prior_std: float, history: dict[str, list[dict[str, float]]],
              title: str) -> None:
    """``figures/ssac.png``: reconstructions, PCA of the test codes (with prior samples), training curves."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 9))
    grid = np.concatenate([_montage(originals), _montage(recons)], axis=0)
    ax[0, 0].imshow(np.clip(grid, 0, 1), cmap="gray", vmin=0, vmax=1)
    ax[0, 0].set_title("test images (top) and AAE reconstructions (bottom)")
    ax[0, 0].axis("off")

    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    basis = vt[:2].T
    prior = np.random.default_rng(0).normal(0, prior_std, size=(min(len(z), 500), z.shape[1]))
    pp = (prior - z.mean(0)) @ basis
    ax[0, 1].scatter(pp[:, 0], pp[:, 1], s=4, c="lightgrey", label="prior samples")
    proj = zc @ basis
    for k, name in enumerate(classes):
        sel = y == k
        if sel.any():
            ax[0, 1].scatter(proj[sel, 0], proj[sel, 1], s=6, alpha=0.7, label=name)
    ax[0, 1].set_title("latent z of the test images (PCA, 2 components)")
    ax[0, 1].legend(markerscale=3, fontsize=8)

    aae_h = history.get("aae", [])
    if aae_h:
        ep = [h["epoch"] for h in aae_h]
        for key, label, style in (("recon", "reconstruction", "-"), ("d_loss", "discriminator", "-"),
                                  ("g_loss", "generator", "-"), ("d_acc", "D accuracy", ":")):
            ax[1, 0].plot(ep, [h.get(key, math.nan) for h in aae_h], style, label=label)
        ax[1, 0].legend(fontsize=8)
    ax[1, 0].set_title("phase 1: adversarial autoencoder")
    ax[1, 0].set_xlabel("epoch")

    twin = ax[1, 1].twinx()
    for name, style in (("ssac", "-"), ("classifier", "--")):
        h = history.get(name, [])
        if not h:
            continue
        ep = [r["epoch"] for r in h]
        ax[1, 1].plot(ep, [r["loss"] for r in h], style, color="tab:blue", label=f"{name} train loss")
        if "val_auc" in h[0]:
            twin.plot(ep, [r["val_auc"] for r in h], style, color="tab:orange", label=f"{name} val AUC")
    ax[1, 1].set_xlabel("epoch")
    ax[1, 1].set_ylabel("cross-entropy")
    twin.set_ylabel("validation AUC")
    lines = ax[1, 1].get_legend_handles_labels()
    lines2 = twin.get_legend_handles_labels()
    ax[1, 1].legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center right")
    ax[1, 1].set_title("phase 2: SSAC (solid) vs classifier alone (dashed)")
    fig.suptitle(title)
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, dpi=100))
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ run


def _check_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise InputError(run_dir, "run folder already exists and is not empty: choose a new --run "
                                  "(nothing is overwritten)")


def _load_data(cfg: SSACConfig) -> dict[str, Any]:
    from aemia.data.catalog import get_dataset
    from aemia.runs.config import labelled_subset

    ds = get_dataset(cfg.dataset)
    if not ds.classes:
        raise InputError(None, f"data set '{ds.name}' has no image-level classes: SSAC needs a classification data set")
    if ds.dims != 2:
        raise InputError(None, f"data set '{ds.name}' is {ds.dims}D: SSAC here works on 2D images")
    size = cfg.working_size()
    x, _, t = ds.arrays("train", size)
    ids = ds.case_ids("train")
    labelled = labelled_subset(ids, cfg.label_fraction, cfg.seed)
    keep = set(labelled)
    lab_idx = np.array([i for i, c in enumerate(ids) if c in keep], dtype=np.int64)
    unl_idx = np.array([i for i, c in enumerate(ids) if c not in keep], dtype=np.int64)
    if cfg.max_unlabelled is not None and len(unl_idx) > cfg.max_unlabelled:
        pick = np.random.default_rng([cfg.seed, 3]).choice(len(unl_idx), cfg.max_unlabelled, replace=False)
        unl_idx = np.sort(unl_idx[pick])
    val = None
    if ds.splits.get("val"):
        vx, _, vt = ds.arrays("val", size)
        val = (np.ascontiguousarray(vx), np.asarray(vt))
    tx, _, tt = ds.arrays("test", size)
    return {
        "ds": ds, "size": size, "labelled": labelled, "unlabelled": [ids[i] for i in unl_idx],
        "x_lab": np.ascontiguousarray(x[lab_idx]), "t_lab": np.asarray(t[lab_idx]),
        "x_all": np.ascontiguousarray(x[np.sort(np.concatenate([lab_idx, unl_idx]))]),
        "val": val, "x_test": np.ascontiguousarray(tx), "t_test": np.asarray(tt),
    }


def _load_pretrained_aae(aae: AAE, cfg: SSACConfig) -> list[dict[str, float]]:
    """Load phase 1 of an earlier run into ``aae``; it must match this run's data set, size and R widths."""
    path = Path(str(cfg.pretrained_aae))
    if path.is_dir():
        path = path / "checkpoints" / "aae"
    meta = read_config(path)
    if meta.get("model") != aae.config:
        raise InputError(path, f"AAE {meta.get('model')} differs from this run's {aae.config}")
    src = meta.get("ssac", {})
    if src.get("dataset") != cfg.dataset or src.get("max_unlabelled") is not None or cfg.max_unlabelled is not None:
        raise InputError(path, "a pretrained AAE is reusable only for the same data set, trained on the whole "
                               "training split")
    aae.load_state_dict(read_state(path))
    aae.eval()
    return list(meta.get("history", []))


def build_models(cfg: SSACConfig, in_channels: int, n_classes: int) -> tuple[AAE, FusionClassifier, FusionClassifier]:
    """The AAE (R), SSAC's classifier (C with transitions) and the baseline (C alone); C seeded identically."""
    size = cfg.working_size()
    widths, r_widths = cfg.level_widths()
    if len(widths) != len(r_widths):
        raise ValueError(f"C has {len(widths)} levels and R {len(r_widths)}: give widths of equal length")
    torch.manual_seed(cfg.seed)
    aae = AAE(in_channels, size, r_widths, cfg.latent_dim)
    torch.manual_seed(cfg.seed + 1)
    fused = FusionClassifier(in_channels, n_classes, widths, r_widths=r_widths, fuse_levels=cfg.fuse_levels,
                             dropout=cfg.dropout)
    torch.manual_seed(cfg.seed + 1)
    alone = FusionClassifier(in_channels, n_classes, widths, dropout=cfg.dropout)
    return aae, fused, alone


def run_ssac(cfg: SSACConfig, run_dir: str | Path) -> dict[str, Any]:
    """Phase 1 AAE on all training images, phase 2 SSAC and "C alone" on the labelled ones, test evaluation.

    Writes ``config.json``, ``splits.json``, ``checkpoints/``, ``metrics.json`` and ``figures/ssac.png`` into
    ``run_dir`` (which must not exist or be empty) and returns the metrics.
    """
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    t0 = time.monotonic()
    data = _load_data(cfg)
    ds = data["ds"]
    n_classes = len(ds.classes)
    in_ch = data["x_all"].shape[1]
    aae, fused, alone = build_models(cfg, in_ch, n_classes)
    pretrained = _load_pretrained_aae(aae, cfg) if cfg.pretrained_aae else None  # checked before writing anything
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", asdict(cfg))
    write_json_atomic(run_dir / "splits.json", {**ds.split_manifest(), "labelled": data["labelled"],
                                                 "unlabelled_used": data["unlabelled"],
                                                 "label_fraction": cfg.label_fraction})
    seconds: dict[str, float] = {"data": time.monotonic() - t0}
    history: dict[str, list[dict[str, float]]] = {}

    t = time.monotonic()
    if pretrained is not None:
        history["aae"] = pretrained
    else:
        with Bar("phase 1 AAE", total=cfg.epochs_aae, enabled=cfg.progress) as bar:
            history["aae"] = train_aae(aae, data["x_all"], cfg, bar)
    seconds["aae"] = time.monotonic() - t
    save_checkpoint(aae, run_dir / "checkpoints" / "aae", {"ssac": asdict(cfg), "history": history["aae"]})
    y = data["t_test"]
    n_show = max(1, 8 // n_classes)
    pick = np.concatenate([np.flatnonzero(y == k)[:n_show] for k in range(n_classes)])[:8]
    z, rec_test = _latent(aae, data["x_test"])  # before phase 2 can fine-tune the shared encoder
    with torch.no_grad():
        recons = aae.reconstruct(torch.from_numpy(data["x_test"][pick])).numpy()

    ssac = SSACNet(aae.encoder, fused, freeze_encoder=cfg.encoder == "frozen")
    for name, model in (("ssac", ssac), ("classifier", alone)):
        t = time.monotonic()
        with Bar(f"phase 2 {name}", total=cfg.epochs_cls, enabled=cfg.progress) as bar:
            history[name] = train_classifier(model, data["x_lab"], data["t_lab"], cfg, data["val"], bar, name)
        seconds[name] = time.monotonic() - t
        save_checkpoint(model, run_dir / "checkpoints" / name, {"ssac": asdict(cfg)})

    probs = {name: predict_proba(m, data["x_test"]) for name, m in (("ssac", ssac), ("classifier", alone))}
    results = {name: classification_metrics(y, p, cfg.n_boot, cfg.seed) for name, p in probs.items()}
    delta = paired_auc_difference(y, probs["ssac"], probs["classifier"], cfg.n_boot, cfg.seed)
    a, c = results["ssac"]["auc"], results["classifier"]["auc"]
    headline = (f"{ds.name} {cfg.label_fraction:g} labels: SSAC AUC {a['mean']:.3f} ({a['ci'][0]:.3f}-{a['ci'][1]:.3f})"
                f" vs classifier alone {c['mean']:.3f} ({c['ci'][0]:.3f}-{c['ci'][1]:.3f});"
                f" difference {delta['mean']:+.3f} ({delta['ci'][0]:+.3f} to {delta['ci'][1]:+.3f})")

    plot_ssac(run_dir / "figures" / "ssac.png", data["x_test"][pick], recons, z, y, ds.classes, cfg.prior_std,
              history, headline)
    seconds["total"] = time.monotonic() - t0
    metrics = {
        "method": "SSAC (Xie, Zhang, Xia, MedIA 2019): AAE reconstruction network + classifier with 1x1 transitions",
        "dataset": ds.name, "classes": list(ds.classes), "label_fraction": cfg.label_fraction, "seed": cfg.seed,
        "size": data["size"], "n_labelled": len(data["labelled"]), "n_unlabelled": len(data["unlabelled"]),
        "n_test": int(len(y)),
        "ssac": results["ssac"], "classifier": results["classifier"], "delta_auc": delta,
        "aae": {"test_recon_bce": rec_test["bce"], "test_recon_mse": rec_test["mse"], "z_mean": float(z.mean()),
                "z_std": float(z.std()), "final_d_acc": history["aae"][-1].get("d_acc") if history["aae"] else None,
                "pretrained_from": cfg.pretrained_aae},
        "headline": headline, "history": history, "seconds": seconds, "config": asdict(cfg),
    }
    _write_per_case(run_dir / "per_case.csv", ds.case_ids("test"), y, probs, ds.classes)
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def _write_per_case(path: Path, ids: Sequence[str], y: np.ndarray, probs: dict[str, np.ndarray],
                    classes: Sequence[str]) -> None:
    """One row per test case: id, target and each model's class probabilities (``ssac_p_<class>``, ...)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "target", *[f"{m}_p_{c}" for m in probs for c in classes]])
    for i, cid in enumerate(ids):
        w.writerow([cid, int(y[i]), *[f"{float(probs[m][i, k]):.6g}" for m in probs for k in range(len(classes))]])
    write_text_atomic(path, buf.getvalue())


def load_ssac(run_dir: str | Path) -> tuple[AAE, SSACNet, FusionClassifier]:
    """Rebuild the AAE, the SSAC classifier and the baseline of a finished run from its checkpoints."""
    ckpt = Path(run_dir) / "checkpoints"
    ac = read_config(ckpt / "aae")["model"]
    aae = AAE(ac["in_channels"], ac["size"], ac["widths"], ac["latent_dim"], ac["disc_hidden"])
    aae.load_state_dict(read_state(ckpt / "aae"))
    models: list[nn.Module] = []
    for name in ("ssac", "classifier"):
        mc = read_config(ckpt / name)["model"]
        cc = mc["classifier"] if mc["class"] == "SSACNet" else mc
        clf = FusionClassifier(cc["in_channels"], cc["n_classes"], cc["widths"], cc["r_widths"], cc["fuse_levels"],
                               cc["dropout"])
        model: nn.Module = clf
        if mc["class"] == "SSACNet":
            encoder = Encoder(ac["in_channels"], ac["size"], ac["widths"], ac["latent_dim"])
            model = SSACNet(encoder, clf, mc["freeze_encoder"])
        model.load_state_dict(read_state(ckpt / name))
        models.append(model.eval())
    return aae.eval(), models[0], models[1]  # type: ignore[return-value]


__all__ = [
    "AAE", "Decoder", "Discriminator", "Encoder", "FusionClassifier", "SSACConfig", "SSACNet", "build_models",
    "class_scores", "classification_metrics", "default_widths", "discriminator_loss", "generator_loss",
    "level_sizes", "load_ssac", "paired_auc_difference", "plot_ssac", "predict_proba", "reconstruction_loss",
    "run_ssac", "train_aae", "train_classifier",
]
