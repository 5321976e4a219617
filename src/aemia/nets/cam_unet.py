"""Enhanced-SN of MB-DCNN: a U-Net with a class activation map injected at the bottleneck.

Xie, Zhang, Xia, Shen, "A Mutual Bootstrapping Model for Automated Skin Lesion Segmentation and Classification",
IEEE TMI 2020 (METHODS.md §7.2). The training recipe is :mod:`aemia.semisup.bootstrapping`; the network lives
here so that a checkpoint of it loads from the registry (``unet-cam``) without importing the recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aemia.nets.unet import UNet

__all__ = ["CamGuidedUNet", "resize_map"]


def resize_map(m: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize (N, C, H, W) maps: area averaging when shrinking, bilinear when enlarging."""
    size = tuple(int(s) for s in size)
    if tuple(m.shape[2:]) == size:
        return m
    if all(s <= h for s, h in zip(size, m.shape[2:])):
        return F.adaptive_avg_pool2d(m, size)
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


class CamGuidedUNet(UNet):
    """Enhanced-SN: a U-Net whose bottleneck gets the classifier's CAM (1 channel) concatenated, then a 1×1 conv
    back to the bottleneck width. Input (N, in_channels + 1, H, W): the image channels, then the CAM at any
    resolution (resized to the bottleneck by area averaging). 2D only.

    ``inject_init="random"`` (default): PyTorch's default initialisation of the 1×1 conv; ``"identity"``: the
    conv passes the features through unchanged and gives the CAM a small random weight (N(0, 0.01)), so a
    network initialised from Coarse-SN starts as Coarse-SN. ``forward_features``' ``bottleneck`` is the map
    after the injection (the one the decoder reads).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 features: Sequence[int] = (64, 128, 256, 512, 1024), norm: str = "batch", upsample: str = "deconv",
                 dropout: float = 0.0, deep_supervision: bool = False, inject_init: str = "random") -> None:
        if spatial_dims != 2:
            raise ValueError("CamGuidedUNet is 2D only")
        if inject_init not in ("identity", "random"):
            raise ValueError(f"inject_init must be identity or random, got {inject_init!r}")
        super().__init__(spatial_dims, in_channels, out_channels, features, norm, upsample, dropout)
        self.image_channels = in_channels
        self.in_channels = in_channels + 1
        width = self.levels[-1]
        self.inject = nn.Conv2d(width + 1, width, kernel_size=1)
        if inject_init == "identity":
            with torch.no_grad():
                self.inject.weight.zero_()
                self.inject.weight[:, :width, 0, 0] = torch.eye(width)
                self.inject.weight[:, width, 0, 0].normal_(0.0, 0.01)
                self.inject.bias.zero_()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.image_channels + 1:
            raise ValueError(f"expected (N, {self.image_channels} image + 1 CAM channels, H, W), got {tuple(x.shape)}")
        m = 2**self.depth
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {m} (2^depth)")

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, cam = x[:, : self.image_channels], x[:, self.image_channels :]
        skips = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                h = self.pool(h)
            h = block(h)
            if i == self.depth:
                h = self.inject(torch.cat([h, resize_map(cam.to(h.dtype), h.shape[2:])], dim=1))
            skips.append(h)
        return skips
