"""ResNet-style classifier, 2D or 3D (He et al., "Deep Residual Learning", CVPR 2016: basic blocks).

``features`` lists the stage widths (ResNet-18: (64, 128, 256, 512) with ``blocks=(2, 2, 2, 2)``; CPU preset
(16, 32, 64, 128) with one block per stage). ``forward_features`` returns the named feature maps (``enc*``,
``bottleneck``) and the pooled ``embedding`` used by embedding-based strategies (core-set), ``forward_maps`` the
last feature map before pooling (class activation maps) and ``forward`` the class logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from aemia.nets.layers import conv_nd, norm_nd


class BasicBlock(nn.Module):
    def __init__(self, dims: int, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        conv = conv_nd(dims)
        self.conv1 = conv(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_nd(dims, norm, out_ch)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = norm_nd(dims, norm, out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(conv(in_ch, out_ch, 1, stride=stride, bias=False), norm_nd(dims, norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class ResNetHead(nn.Module):
    """The shared forward of ResNet-style classifiers: ``stem`` → ``stages`` → global ``pool`` → ``dropout`` →
    ``fc``. Subclasses build those modules and set ``in_channels``."""

    in_channels: int
    stem: nn.Module
    stages: nn.Module
    pool: nn.Module
    dropout: nn.Module
    fc: nn.Module

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, embedding_dim, *S') before global pooling (= ``forward_features(x)["bottleneck"]``)."""
        return self.forward_features(x)["bottleneck"]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named feature maps: ``enc0`` (the stem's output), ``enc1..encS`` (each stage's output, shallow to deep),
        ``bottleneck`` (= the last stage's map, the one class activation maps weight) and ``embedding`` (N, C):
        the globally pooled vector that feeds the final linear layer."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"model expects {self.in_channels} input channels, got {x.shape[1]}")
        h = self.stem(x)
        feats = {"enc0": h}
        for s, stage in enumerate(self.stages):
            h = stage(h)
            feats[f"enc{s + 1}"] = h
        feats["bottleneck"] = h
        feats["embedding"] = torch.flatten(self.pool(h), 1)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)["embedding"]))


class ResNetClassifier(ResNetHead):
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] | None = None,
        norm: str = "batch",
        dropout: float = 0.0,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        feats = tuple(int(f) for f in features)
        blocks = tuple(blocks) if blocks is not None else (2,) * len(feats)
        if len(blocks) != len(feats):
            raise ValueError("blocks and features must have the same length")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.deep_supervision = False
        conv = conv_nd(spatial_dims)
        self.stem = nn.Sequential(
            conv(in_channels, feats[0], 3, padding=1, bias=False), norm_nd(spatial_dims, norm, feats[0]), nn.ReLU(inplace=True)
        )
        stages = []
        in_ch = feats[0]
        for s, (width, n) in enumerate(zip(feats, blocks)):
            layers = []
            for b in range(n):
                layers.append(BasicBlock(spatial_dims, in_ch, width, 2 if (b == 0 and s > 0) else 1, norm))
                in_ch = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[spatial_dims](1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_ch, out_channels)
        self.embedding_dim = in_ch

