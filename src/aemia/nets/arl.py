"""ARL-CNN: attention residual learning (Zhang, Xie, Xia, Shen, "Attention Residual Learning for Skin Lesion
Classification", IEEE TMI 2019; METHODS.md §7.3).

Every block of the ResNet is an ARL block::

    y = ReLU(F(x) + s(x) + α · A(F(x)) ⊙ s(x))

with F the block's residual branch, s the shortcut (identity, or 1×1 conv + norm when the shape changes),
A a *spatial* softmax taken per channel over the block's own residual output F(x) (each channel's map sums
to 1 over its positions; no extra learnable layers: "the feature maps learned by a high layer generate the
attention map for a low layer") and α one learnable scalar per block, initialised to 0, so an untrained ARL
block is exactly a plain residual block.

The softmax's axis is not settled (METHODS.md §7.3, "still unverified"): the paper as remembered uses the
spatial softmax (``attention_axis="spatial"``, the default), the unofficial code ``nn.Softmax2d``, a softmax
over the channels at each position (``attention_axis="channel"``; each position's weights sum to 1 over C). With
the spatial softmax every weight is about 1/(H·W), so α·A⊙x starts out tiny; the channel softmax's weights are
about 1/C, orders of magnitude larger at the first stages.

Defaults are the paper's ARL-CNN50: bottleneck blocks (1×1 → 3×3 → 1×1, inner width = width / 4),
``blocks=(3, 4, 6, 3)``, stage widths ``(256, 512, 1024, 2048)``. The paper's ImageNet stem (7×7/2 conv +
3×3/2 max-pool) is ``stem="conv7"``; the default ``stem="conv3"`` is the toolkit's classifier stem (3×3,
stride 1; :class:`aemia.nets.classifier.ResNetClassifier`), which keeps class-activation maps usable at the
small image sizes a CPU trains on. CPU preset: :data:`CPU_PRESET` (basic blocks, widths 16..128, one block
per stage); with ``block="basic"`` and ``stem="conv3"`` the network has exactly the parameters of a
ResNetClassifier of the same ``features``/``blocks`` plus the α's (its state dict loads into one).

``forward_features`` returns the named feature maps and the pooled ``embedding``, ``forward_maps`` the last feature map before pooling
(for class activation maps, :mod:`aemia.weak.cam`) and ``forward`` the class logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from aemia.nets.classifier import BasicBlock, ResNetHead
from aemia.nets.layers import conv_nd, max_pool_nd, norm_nd

#: The paper's ARL-CNN50.
PAPER_FEATURES: tuple[int, ...] = (256, 512, 1024, 2048)
PAPER_BLOCKS: tuple[int, ...] = (3, 4, 6, 3)
#: A CPU-sized ARL-ResNet (ARL-ResNet-10 with basic blocks, METHODS.md §7.3 "smallest CPU version").
CPU_PRESET: dict[str, Any] = {"features": (16, 32, 64, 128), "blocks": (1, 1, 1, 1), "block": "basic"}

BLOCKS = ("basic", "bottleneck")
STEMS = ("conv3", "conv7")
BOTTLENECK_EXPANSION = 4


def spatial_softmax(f: torch.Tensor) -> torch.Tensor:
    """Softmax over the spatial positions of each (sample, channel) map of ``f`` (N, C, *S)."""
    dims = tuple(range(2, f.ndim))
    g = f.float()  # in float32 even under autocast: each of the H·W weights is small
    return torch.exp(g - torch.logsumexp(g, dim=dims, keepdim=True)).to(f.dtype)


def channel_softmax(f: torch.Tensor) -> torch.Tensor:
    """Softmax over the channels at each position of ``f`` (N, C, *S) (``nn.Softmax2d``, in any dimension)."""
    return torch.softmax(f.float(), dim=1).to(f.dtype)


#: attention normalisations: name -> function of F(x)
ATTENTION_AXES = {"spatial": spatial_softmax, "channel": channel_softmax}


def _check_axis(axis: str) -> str:
    if axis not in ATTENTION_AXES:
        raise ValueError(f"unknown attention_axis {axis!r}; choose one of {tuple(ATTENTION_AXES)}")
    return axis


class _ArlMixin:
    """The ARL output rule shared by the basic and bottleneck blocks."""

    alpha: nn.Parameter | None
    attention_axis: str = "spatial"
    shortcut: nn.Module
    relu: nn.Module

    def residual(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - defined by the blocks
        raise NotImplementedError

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The block's attention maps A(F(x)) (N, C, *S): each channel's map sums to 1 over its positions
        (``spatial``), or each position's weights sum to 1 over the channels (``channel``)."""
        return ATTENTION_AXES[self.attention_axis](self.residual(x))

    def _combine(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut(x)
        if self.alpha is None:
            return self.relu(f + s)
        return self.relu(f + s + self.alpha * ATTENTION_AXES[self.attention_axis](f) * s)


class ArlBasicBlock(_ArlMixin, BasicBlock):
    """Two 3×3 convs (the ResNet-18/34 block) with attention residual learning; ``attention=False`` gives the
    plain :class:`aemia.nets.classifier.BasicBlock` (same parameter names)."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, stride: int, norm: str, attention: bool = True,
                 attention_axis: str = "spatial") -> None:
        BasicBlock.__init__(self, dims, in_ch, out_ch, stride, norm)
        self.alpha = nn.Parameter(torch.zeros(())) if attention else None
        self.attention_axis = _check_axis(attention_axis)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._combine(self.residual(x), x)


class ArlBottleneck(_ArlMixin, nn.Module):
    """1×1 (width/4) → 3×3 (stride) → 1×1 (width), the ResNet-50 block, with attention residual learning."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, stride: int, norm: str, attention: bool = True,
                 attention_axis: str = "spatial") -> None:
        nn.Module.__init__(self)
        mid = max(out_ch // BOTTLENECK_EXPANSION, 1)
        conv = conv_nd(dims)
        self.conv1 = conv(in_ch, mid, 1, bias=False)
        self.bn1 = norm_nd(dims, norm, mid)
        self.conv2 = conv(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_nd(dims, norm, mid)
        self.conv3 = conv(mid, out_ch, 1, bias=False)
        self.bn3 = norm_nd(dims, norm, out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(conv(in_ch, out_ch, 1, stride=stride, bias=False),
                                          norm_nd(dims, norm, out_ch))
        self.alpha = nn.Parameter(torch.zeros(())) if attention else None
        self.attention_axis = _check_axis(attention_axis)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.bn3(self.conv3(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._combine(self.residual(x), x)


class ArlResNet(ResNetHead):
    """ARL-CNN classifier: stem → stages of ARL blocks (stride 2 at the start of every stage but the first) →
    global average pooling → dropout → linear layer.

    ``features`` are the stages' output widths; ``blocks`` the blocks per stage (``None``: the paper's
    (3, 4, 6, 3) for four stages, else two per stage as in ResNetClassifier). ``attention=False`` builds the
    same ResNet without attention (the ablation baseline); ``attention_axis`` is the softmax's axis
    (``spatial`` or ``channel``, see the module docstring). ``deep_supervision`` is accepted for the registry and
    ignored.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = PAPER_FEATURES,
        blocks: Sequence[int] | None = None,
        block: str = "bottleneck",
        stem: str = "conv3",
        attention: bool = True,
        attention_axis: str = "spatial",
        norm: str = "batch",
        dropout: float = 0.0,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose one of {BLOCKS}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
        _check_axis(attention_axis)
        feats = tuple(int(f) for f in features)
        if blocks is None:
            blocks = PAPER_BLOCKS if len(feats) == len(PAPER_BLOCKS) else (2,) * len(feats)
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != len(feats):
            raise ValueError("blocks and features must have the same length")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.deep_supervision = False
        conv = conv_nd(spatial_dims)
        stem_width = feats[0] if block == "basic" else max(feats[0] // BOTTLENECK_EXPANSION, 1)
        if stem == "conv3":
            layers: list[nn.Module] = [conv(in_channels, stem_width, 3, padding=1, bias=False)]
        else:
            layers = [conv(in_channels, stem_width, 7, stride=2, padding=3, bias=False)]
        layers += [norm_nd(spatial_dims, norm, stem_width), nn.ReLU(inplace=True)]
        if stem == "conv7":
            layers.append(max_pool_nd(spatial_dims)(3, stride=2, padding=1))
        self.stem = nn.Sequential(*layers)
        unit = ArlBasicBlock if block == "basic" else ArlBottleneck
        stages = []
        in_ch = stem_width
        for s, (width, n) in enumerate(zip(feats, blocks)):
            units = []
            for b in range(n):
                units.append(unit(spatial_dims, in_ch, width, 2 if (b == 0 and s > 0) else 1, norm, attention,
                                  attention_axis))
                in_ch = width
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.pool = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[spatial_dims](1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_ch, out_channels)
        self.embedding_dim = in_ch

    def arl_blocks(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, _ArlMixin)]

    def alphas(self) -> list[float]:
        """Current α of every ARL block, in network order (empty without attention)."""
        return [float(m.alpha.detach()) for m in self.arl_blocks() if m.alpha is not None]
