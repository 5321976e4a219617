"""SSAC's networks, adversarial-autoencoder losses and run recipe (:mod:`aemia.semisup.ssac` describes the method:
Xie, Zhang, Xia, "Semi-supervised adversarial model for benign-malignant lung nodule classification on chest CT",
MedIA 2019)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


ENCODER_MODES = ("frozen", "finetune")
RECON_LOSSES = ("bce", "mse")
AMP_MODES = ("none", "bf16", "fp16", "auto")

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
    amp: str = "none"  # mixed precision of both phases' forward passes: none | bf16 | fp16 | auto
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
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")

    def working_size(self) -> int:
        return int(self.size) if self.size else (28 if "mnist" in self.dataset else 64)

    def level_widths(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(C's widths, R's widths)."""
        base = default_widths(self.working_size())
        c = tuple(self.widths) if self.widths else base
        r = tuple(self.aae_widths) if self.aae_widths else tuple(max(1, w // 2) for w in base)
        return c, r
