"""TransVW / Semantic Genesis: self-discovered visual words, self-classification + self-restoration.

Papers: Haghighi, Hosseinzadeh Taher, Zhou, Gotway, Liang. "Learning Semantics-enriched Representation via
Self-discovery, Self-classification, and Self-restoration" (Semantic Genesis, MICCAI 2020) and "Transferable
Visual Words" (TransVW, IEEE TMI 2021). Facts from ``shared/reference/METHODS.md`` §6.1:

* **Self-discovery**: an autoencoder is trained on whole images (paper: volumes resized to 128×128×64); each
  image's feature is the global average of the bottleneck. For each of ``n_classes`` visual words an unused
  random *reference* image is drawn, all images are ranked by L2 distance of their features to it, one random
  coordinate is drawn in the nearest image (≥ 5 voxels from coordinates already used) and a patch is cropped at
  that same coordinate in the ``instances`` nearest images (paper: 200). Those crops are the word's instances.
* **Self-classification + self-restoration**: an encoder-decoder with a classification head on the bottleneck
  (Conv3 → BN → ReLU → GAP → FC, the paper's 512→1024→C) learns the word class *and* restores the original
  patch from a transformed copy: exactly one of {local shuffle, non-linear intensity, in-painting with one block,
  out-painting}, each with probability 0.25 (unlike Models Genesis, which composes them).
* **Loss** λ_cls·CE + λ_rec·MSE with λ_cls = 0.01, λ_rec = 1; Adam lr 1e-3, StepLR(40, 0.5).

Defaults are the paper's (44 classes = the chest-CT training default, 200 instances, 64×64×32 patches); the
CPU presets shrink classes, instances and sizes. Coordinates are stored relative to the image size, so images
of different sizes share a word's location. The optional elastic deformation (α 991, σ 8, x and y only; the
restoration target is the undeformed patch) is off by default (``elastic=True`` turns it on).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aemia.errors import InputError
from aemia.nets.layers import conv_nd, conv_transpose_nd, norm_nd
from aemia.pretrain import genesis as G
from aemia.train.data import EpochDataset, sample_rng
from aemia.train.hooks import Hook


@dataclass
class VisualWordsConfig:
    n_classes: int = 44  # METHODS §6.1: chest-CT training default (the generator's default is 200)
    instances: int = 200  # nb_instances: nearest images per word
    patch: tuple[int, ...] = (64, 64, 32)
    min_distance: float = 5.0  # voxels between word coordinates
    ae_size: tuple[int, ...] = (128, 128, 64)  # autoencoder input (whole images resized)
    ae_width: int = 16
    ae_epochs: int = 20
    lambda_cls: float = 0.01
    lambda_rec: float = 1.0
    elastic: bool = False  # the optional elastic deformation before the transformation (target: the undeformed patch)
    elastic_alpha: float = 991.0  # METHODS §6.1: α = 991, σ = 8 voxels (64x64x32 patches)
    elastic_sigma: float = 8.0

    def elastic_params(self) -> tuple[float, float] | None:
        """``(alpha, sigma)`` when the elastic deformation is on, else None."""
        return (self.elastic_alpha, self.elastic_sigma) if self.elastic else None

    @classmethod
    def cpu_2d(cls) -> "VisualWordsConfig":
        # α 180 in 2D gives the paper's 3D displacement (std ~3 voxels at σ 8): smoothing a 2D field averages fewer
        # voxels, so α 991 would move 2D pixels ~17 voxels
        return cls(n_classes=16, instances=40, patch=(64, 64), ae_size=(64, 64), ae_width=8, ae_epochs=8,
                   elastic_alpha=180.0)

    @classmethod
    def cpu_3d(cls) -> "VisualWordsConfig":
        return cls(n_classes=8, instances=20, patch=(32, 32, 16), ae_size=(64, 64, 32), ae_width=8, ae_epochs=8)


# ---------------------------------------------------------------------------------------- self-discovery
class ConvAutoencoder(nn.Module):
    """A plain convolutional autoencoder (no skip connections: the bottleneck must summarise the image)."""

    def __init__(self, dims: int, channels: int, width: int = 16, levels: int = 4) -> None:
        super().__init__()
        conv, deconv = conv_nd(dims), conv_transpose_nd(dims)
        enc: list[nn.Module] = []
        ch = channels
        for i in range(levels):
            out = width * 2**i
            enc += [conv(ch, out, 3, stride=2, padding=1), norm_nd(dims, "batch", out), nn.ReLU(inplace=True)]
            ch = out
        dec: list[nn.Module] = []
        for i in reversed(range(levels)):
            out = channels if i == 0 else width * 2 ** (i - 1)
            dec.append(deconv(ch, out, 2, stride=2))
            if i:
                dec += [norm_nd(dims, "batch", out), nn.ReLU(inplace=True)]
            ch = out
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global average of the bottleneck: one vector per image (the paper's 512-d ``depth_7_relu`` GAP)."""
        return self.encoder(x).flatten(2).mean(-1)


def train_autoencoder(images: np.ndarray, cfg: VisualWordsConfig, seed: int = 0, progress: bool = True,
                      run_dir: str | Path | None = None, resume: bool = False, amp: str = "none",
                      hooks: Sequence[Hook] = ()) -> np.ndarray:
    """Train the autoencoder on ``images`` (N, C, *ae_size) in [0, 1]; return features (N, D).

    The one :class:`~aemia.train.trainer.Trainer` runs it (restoration task: MSE of sigmoid(output) to the image;
    Adam 1e-3, batch 16, ``cfg.ae_epochs`` epochs) in ``run_dir`` (a temporary folder when None), so it
    checkpoints every epoch and ``resume`` continues a killed run exactly; ``hooks`` are passed to the Trainer.
    """
    from aemia.pretrain.restore import RestorationDataset, identity_pair
    from aemia.train.trainer import TrainConfig, Trainer

    torch.manual_seed(seed)
    dims = images.ndim - 2
    ae = ConvAutoencoder(dims, images.shape[1], cfg.ae_width)
    if cfg.ae_epochs > 0:
        tcfg = TrainConfig(epochs=cfg.ae_epochs, batch_size=16, lr=1e-3, optimizer="adam", schedule="constant",
                           deep_supervision=False, seed=seed, amp=amp, channels_last=False, device="cpu",
                           progress=progress)
        with contextlib.ExitStack() as stack:
            folder = run_dir if run_dir is not None else stack.enter_context(tempfile.TemporaryDirectory())
            trainer = Trainer(ae, RestorationDataset(images, identity_pair, seed), None, tcfg, folder, hooks=hooks,
                              task="restoration")
            trainer.fit(resume=resume)
    ae.eval()
    x_all = torch.from_numpy(images)
    with torch.no_grad():
        return torch.cat([ae.features(x_all[i : i + 64]) for i in range(0, len(x_all), 64)]).numpy()


@dataclass
class VisualWords:
    """Discovered words: ``patches`` (N, C, *patch), ``labels`` (N,), and per word its reference image,
    relative coordinate (patch centre / image size) and member images."""

    patches: np.ndarray
    labels: np.ndarray
    words: list[dict[str, Any]] = field(default_factory=list)


def _crop_at(image: np.ndarray, rel: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    shape = np.array(image.shape[1:])
    centre = np.round(rel * shape).astype(int)
    start = np.clip(centre - np.array(patch) // 2, 0, shape - np.array(patch))
    return image[(slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch))]


def discover(images: list[np.ndarray], features: np.ndarray, cfg: VisualWordsConfig, rng: np.random.Generator,
             tissue_ok: Any = None) -> VisualWords:
    """Self-discovery of visual words (METHODS §6.1 steps 3): references, L2 neighbours, shared coordinates.

    ``images`` are (C, *S) arrays in [0, 1] of at least ``cfg.patch`` size; ``tissue_ok(patch) -> bool`` may
    reject a candidate coordinate (e.g. the Genesis CT tissue filter). At most 50 candidate coordinates are
    tried per word.
    """
    n = len(images)
    if n < 2:
        raise InputError(None, "self-discovery needs at least 2 images")
    patch = tuple(int(p) for p in cfg.patch)
    for im in images:
        if any(s < p for s, p in zip(im.shape[1:], patch)):
            raise InputError(None, f"an image of size {im.shape[1:]} is smaller than the patch {patch}")
    k = min(cfg.instances, n)
    unused = list(range(n))
    used_abs: list[np.ndarray] = []
    patches, labels, words = [], [], []
    for word in range(min(cfg.n_classes, n)):
        ref = unused.pop(int(rng.integers(len(unused))))
        order = np.argsort(np.linalg.norm(features - features[ref], axis=1), kind="stable")
        nearest = order[:k]
        host = images[int(nearest[0])]
        shape = np.array(host.shape[1:])
        half = np.array(patch) // 2
        rel = None
        for _ in range(50):
            centre = np.array([int(rng.integers(h, s - (p - h) + 1)) for h, s, p in zip(half, shape, patch)])
            if any(np.linalg.norm(centre - u) < cfg.min_distance for u in used_abs):
                continue
            candidate = centre / shape
            if tissue_ok is not None and not tissue_ok(_crop_at(host, candidate, patch)):
                continue
            rel = candidate
            used_abs.append(centre)
            break
        if rel is None:
            continue
        for idx in nearest:
            patches.append(_crop_at(images[int(idx)], rel, patch))
            labels.append(len(words))
        words.append({"class": len(words), "reference": int(ref), "coordinate": [float(r) for r in rel],
                      "members": [int(i) for i in nearest]})
        if not unused:
            break
    if len(words) < 2:
        raise InputError(None, "fewer than 2 visual words found (images too small or all candidates rejected)")
    return VisualWords(np.stack(patches).astype(np.float32), np.asarray(labels, np.int64), words)


# ------------------------------------------------------------------------ self-classification + restoration
def elastic_deform(x: np.ndarray, rng: np.random.Generator, alpha: float = 991.0, sigma: float = 8.0) -> np.ndarray:
    """Elastic deformation as in TransVW's generator (METHODS §6.1; Simard et al. 2003): a displacement field of
    U(-1, 1) noise over the patch, Gaussian-smoothed with ``sigma`` voxels and scaled by ``alpha``, along the first
    two spatial axes only (x and y; none along z in 3D), applied to every channel with linear interpolation
    (edges reflected). Draws: the x field, then the y field, each of the patch's spatial shape."""
    from scipy import ndimage

    spatial = x.shape[1:]
    if len(spatial) < 2:
        raise ValueError(f"elastic deformation needs at least 2 spatial axes, got shape {x.shape}")
    fields = [ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, spatial), sigma, mode="constant") * alpha
              for _ in range(2)]
    grid = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in spatial], indexing="ij")
    coords = [g + f for g, f in zip(grid, fields)] + list(grid[2:])
    return np.stack([ndimage.map_coordinates(c, coords, order=1, mode="reflect") for c in x]).astype(x.dtype)


def transvw_transform(x: np.ndarray, rng: np.random.Generator, elastic: tuple[float, float] | None = None) -> np.ndarray:
    """Exactly one of local shuffle, non-linear, in-painting (one block), out-painting, each p = 0.25; with
    ``elastic = (alpha, sigma)`` the patch is first deformed (:func:`elastic_deform`)."""
    if elastic is not None:
        x = elastic_deform(x, rng, *elastic)
    choice = int(rng.integers(4))
    if choice == 0:
        return G.local_pixel_shuffle(x, rng)
    if choice == 1:
        return G.nonlinear_transform(x, rng)
    if choice == 2:
        return G.in_paint(x, rng, G.sample_inpaint_boxes(x.shape[1:], rng, max_blocks=1))
    return G.out_paint(x, rng)


class VisualWordDataset(EpochDataset):
    """(transformed patch, (original patch, word class)) with per-(seed, epoch, index) randomness."""

    def __init__(self, words: VisualWords, indices: np.ndarray, seed: int = 0, fixed_epoch: int | None = None,
                 elastic: tuple[float, float] | None = None) -> None:
        self.words, self.indices, self.seed, self.fixed_epoch = words, indices, seed, fixed_epoch
        self.elastic = elastic

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        j = int(self.indices[i])
        clean = self.words.patches[j]
        epoch = self.epoch if self.fixed_epoch is None else self.fixed_epoch
        x = transvw_transform(clean, sample_rng(self.seed, epoch, i), self.elastic)
        return (torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                (torch.from_numpy(clean), torch.tensor(int(self.words.labels[j]))))


class YNet(nn.Module):
    """An encoder-decoder (our UNet / UNet++) plus a classification head on its bottleneck (TransVW's YNet3D).

    ``forward`` returns the restoration logits only (one tensor, like every network here); ``forward_train``
    returns ``(restoration logits, class logits)``. Fine-tuning loads ``backbone.*`` into the plain network.
    """

    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.spatial_dims = backbone.spatial_dims
        self.in_channels = backbone.in_channels
        self.depth = getattr(backbone, "depth", 0)
        dims = backbone.spatial_dims
        ch = backbone.levels[-1]
        self.cls_head = nn.Sequential(conv_nd(dims)(ch, 2 * ch, 3, padding=1, bias=False), norm_nd(dims, "batch", 2 * ch),
                                      nn.ReLU(inplace=True), nn.Flatten(2), _Mean(), nn.Linear(2 * ch, n_classes))
        bottleneck = backbone.nodes[f"x{backbone.depth}_0"] if hasattr(backbone, "nodes") else backbone.encoder[-1]
        self._bottleneck: torch.Tensor | None = None
        bottleneck.register_forward_hook(self._keep)
        self.config = {"name": "transvw_ynet", "backbone": getattr(backbone, "config", {}), "n_classes": n_classes}

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._bottleneck = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.backbone(x)
        feats, self._bottleneck = self._bottleneck, None
        return rec, self.cls_head(feats)


class _Mean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-1)


class TransVWLoss(nn.Module):
    """λ_cls·CE(class) + λ_rec·MSE(sigmoid(restoration), original) (METHODS §6.1: 0.01 and 1)."""

    def __init__(self, lambda_cls: float = 0.01, lambda_rec: float = 1.0) -> None:
        super().__init__()
        self.lambda_cls, self.lambda_rec = lambda_cls, lambda_rec

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        rec, logits = outputs
        image, label = target
        return (self.lambda_cls * F.cross_entropy(logits.float(), label.long())
                + self.lambda_rec * F.mse_loss(torch.sigmoid(rec.float()), image.float()))


def config_dict(cfg: VisualWordsConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["patch"], d["ae_size"] = list(cfg.patch), list(cfg.ae_size)
    return d


__all__ = ["ConvAutoencoder", "TransVWLoss", "VisualWordDataset", "VisualWords", "VisualWordsConfig", "YNet",
           "config_dict", "discover", "elastic_deform", "train_autoencoder", "transvw_transform"]
