"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015; 3D: Çiçek et al., MICCAI 2016), 2D or 3D.

The same H(·) blocks, pooling and upsampling as :mod:`aemia.nets.unetpp`, so U-Net vs UNet++ comparisons
differ only in the skip pathways. ``features`` lists the width of each level (paper: 64..1024, depth 4;
CPU preset (16, 16, 32, 64, 128)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from aemia.nets.layers import ConvBlock, Up, conv_nd, global_average, max_pool_nd
from aemia.nets.unetpp import check_features


class UNet(nn.Module):
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        norm: str = "batch",
        upsample: str = "deconv",
        dropout: float = 0.0,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        levels = check_features(features)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = levels
        self.depth = len(levels) - 1
        self.deep_supervision = False  # a plain U-Net has one head
        self.pool = max_pool_nd(spatial_dims)(2)
        self.encoder = nn.ModuleList(
            ConvBlock(spatial_dims, in_channels if i == 0 else levels[i - 1], levels[i], norm, dropout)
            for i in range(self.depth + 1)
        )
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(self.depth):
            up = Up(spatial_dims, levels[i + 1], levels[i], upsample)
            self.ups.append(up)
            self.decoder.append(ConvBlock(spatial_dims, levels[i] + up.out_channels, levels[i], norm, dropout))
        self.head = conv_nd(spatial_dims)(levels[0], out_channels, 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims + 2}D tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"model expects {self.in_channels} input channels, got {x.shape[1]}")
        m = 2**self.depth
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {m} (2^depth)")

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder outputs of levels 0..depth (the last is the bottleneck the decoder starts from)."""
        skips = []
        h = x
        for i, block in enumerate(self.encoder):
            if i > 0:
                h = self.pool(h)
            h = block(h)
            skips.append(h)
        return skips

    def _decode(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decoder outputs of levels depth-1 .. 0 (deepest first); the last feeds the head."""
        h = skips[-1]
        out = []
        for i in reversed(range(self.depth)):
            h = self.decoder[i](torch.cat([skips[i], self.ups[i](h)], dim=1))
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.head(self._decode(self._encode(x))[-1])

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named feature maps: ``enc0..enc{depth}`` (shallow to deep), ``bottleneck`` (= the deepest encoder map),
        ``dec{i}`` (decoder output at level i, deepest first; ``dec0`` feeds the head) and ``embedding`` (N, C),
        the bottleneck's global average."""
        self._check_input(x)
        skips = self._encode(x)
        feats = {f"enc{i}": s for i, s in enumerate(skips)}
        feats["bottleneck"] = skips[-1]
        for i, d in zip(reversed(range(self.depth)), self._decode(skips)):
            feats[f"dec{i}"] = d
        feats["embedding"] = global_average(skips[-1])
        return feats

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One head; present so every segmentation network trains through the same loss path."""
        return [self.forward(x)]
