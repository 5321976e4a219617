"""UNet++: nested U-Net with dense skip pathways, deep supervision and exact pruning.

Papers: Zhou, Rahman Siddiquee, Tajbakhsh, Liang. "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation", DLMIA 2018; "UNet++: Redesigning Skip Connections to Exploit Multiscale Features in Image
Segmentation", IEEE TMI 2020. Facts used (see ``shared/reference/METHODS.md`` §2):

* Node grid X^{i,j}, i = downsampling level 0..L, j = column. Encoder X^{i,0} = H(Pool(X^{i-1,0})).
  Nested nodes X^{i,j} = H([X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})]), [·] = channel concatenation,
  H = two conv3 + BN + ReLU.
* One 1×1 head on every X^{0,j}, j = 1..L. Deep supervision: the same loss on every head, **equal weights**
  (the Keras multi-output model; the official PyTorch port's loss on a single head is issue #75).
* Inference: accurate mode averages the heads, fast mode uses one head.
* Pruning UNet++ L_d keeps only nodes with i + j <= d; head X^{0,d} depends only on those nodes, so the
  pruned network's output equals head d of the full network exactly.

Widths: ``features = (f_0, ..., f_L)`` are the widths of level i's nodes and ``top_features`` (default f_0)
the width of the top-row nested nodes X^{0,j>=1}; MONAI's ``BasicUNetPlusPlus`` six-tuple
``(f_0..f_4, f_top)`` maps to ``features=(f_0..f_4), top_features=f_top``. Paper defaults: L = 4,
features (32, 64, 128, 256, 512); the CPU preset is (16, 16, 32, 64, 128), top 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from aemia.nets.layers import ConvBlock, Up, conv_nd, global_average, max_pool_nd, working_layout

HEAD_MODES = ("deepest", "mean")


def check_features(features: Sequence[int]) -> tuple[int, ...]:
    """Level widths ``(f_0, ..., f_L)``; at least two levels (depth L >= 1)."""
    feats = tuple(int(f) for f in features)
    if len(feats) < 2 or any(f < 1 for f in feats):
        raise ValueError(f"features must list at least 2 positive level widths, got {feats}")
    return feats


class UNetPlusPlus(nn.Module):
    """UNet++ for 2D or 3D.

    ``forward(x)`` returns one tensor: the logits of head ``L`` (``head_mode='deepest'``, default) or the
    mean of all heads (``head_mode='mean'``). ``forward_heads(x)`` returns ``[X^{0,1}, ..., X^{0,L}]``'s
    logits for the deep-supervision loss. Only the nodes a requested output needs are computed.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        deep_supervision: bool = False,
        norm: str = "batch",
        upsample: str = "deconv",
        dropout: float = 0.0,
        head_mode: str = "deepest",
        top_features: int | None = None,
    ) -> None:
        super().__init__()
        levels = check_features(features)
        top = levels[0] if top_features is None else int(top_features)
        if head_mode not in HEAD_MODES:
            raise ValueError(f"head_mode must be one of {HEAD_MODES}, got {head_mode!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = levels
        self.top_features = top
        self.depth = len(levels) - 1
        self.deep_supervision = deep_supervision
        self.head_mode = head_mode
        self.norm = norm
        self.upsample = upsample
        self.dropout = dropout

        conv = conv_nd(spatial_dims)
        self.pool = max_pool_nd(spatial_dims)(2)
        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        L = self.depth
        for i in range(L + 1):
            in_ch = in_channels if i == 0 else levels[i - 1]
            self.nodes[f"x{i}_0"] = ConvBlock(spatial_dims, in_ch, levels[i], norm, dropout)
        for j in range(1, L + 1):
            for i in range(0, L + 1 - j):
                up = Up(spatial_dims, self.width(i + 1, j - 1), self.width(i, j), upsample)
                self.ups[f"x{i}_{j}"] = up
                cat_ch = sum(self.width(i, k) for k in range(j)) + up.out_channels
                self.nodes[f"x{i}_{j}"] = ConvBlock(spatial_dims, cat_ch, self.width(i, j), norm, dropout)
        self.heads = nn.ModuleList(conv(top, out_channels, 1) for _ in range(L))

    def width(self, i: int, j: int) -> int:
        """Channel width of node X^{i,j}."""
        return self.top_features if (i == 0 and j > 0) else self.levels[i]

    # -- computation ---------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, depth: int) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims + 2}D tensor (N, C, spatial...), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"model expects {self.in_channels} input channels, got {x.shape[1]}")
        m = 2**depth
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {m} (2^depth)")

    def _grid(self, x: torch.Tensor, d: int) -> dict[tuple[int, int], torch.Tensor]:
        """Every node X^{i,j} with i + j <= d."""
        grid: dict[tuple[int, int], torch.Tensor] = {}
        h = working_layout(x)
        for i in range(d + 1):
            if i > 0:
                h = self.pool(h)
            h = self.nodes[f"x{i}_0"](h)
            grid[(i, 0)] = h
        for j in range(1, d + 1):
            for i in range(0, d + 1 - j):
                up = self.ups[f"x{i}_{j}"](grid[(i + 1, j - 1)])
                grid[(i, j)] = self.nodes[f"x{i}_{j}"](torch.cat([grid[(i, k)] for k in range(j)] + [up], dim=1))
        return grid

    def top_row(self, x: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """Features of X^{0,1..d}; computes only nodes with i + j <= d."""
        d = self.depth if depth is None else depth
        if not 1 <= d <= self.depth:
            raise ValueError(f"depth must be in 1..{self.depth}, got {d}")
        self._check_input(x, d)
        grid = self._grid(x, d)
        return [grid[(0, j)] for j in range(1, d + 1)]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named feature maps: ``enc{i}`` = X^{i,0} (shallow to deep), ``bottleneck`` = X^{L,0}, ``dec{i}`` = the
        last node of row i, X^{i,L-i} (deepest first; ``dec0`` = X^{0,L} feeds the deepest head) and
        ``embedding`` (N, C), the bottleneck's global average."""
        L = self.depth
        self._check_input(x, L)
        grid = self._grid(x, L)
        feats = {f"enc{i}": grid[(i, 0)] for i in range(L + 1)}
        feats["bottleneck"] = grid[(L, 0)]
        for i in reversed(range(L)):
            feats[f"dec{i}"] = grid[(i, L - i)]
        feats["embedding"] = global_average(grid[(L, 0)])
        return feats

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head X^{0,1}, ..., X^{0,L} (shallowest first)."""
        feats = self.top_row(x)
        return [head(f).contiguous() for head, f in zip(self.heads, feats)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_mode == "mean":
            heads = self.forward_heads(x)
            return torch.stack(heads, dim=0).mean(dim=0)
        return self.heads[self.depth - 1](self.top_row(x)[-1]).contiguous()

    # -- pruning -------------------------------------------------------------------------------------
    def prune(self, d: int) -> "UNetPlusPlus":
        """UNet++ L_d: a new, smaller network whose ``forward`` equals head ``d`` of this one exactly."""
        if not 1 <= d <= self.depth:
            raise ValueError(f"prune depth must be in 1..{self.depth}, got {d}")
        pruned = UNetPlusPlus(
            self.spatial_dims,
            self.in_channels,
            self.out_channels,
            features=self.levels[: d + 1],
            deep_supervision=False,
            norm=self.norm,
            upsample=self.upsample,
            dropout=self.dropout,
            head_mode="deepest",
            top_features=self.top_features,
        )
        own = self.state_dict()
        state = {k: v for k, v in own.items() if k in pruned.state_dict()}
        pruned.load_state_dict(state, strict=True)
        pruned.to(next(self.parameters()).device)
        pruned.train(self.training)
        if hasattr(self, "config"):
            cfg = dict(self.config)
            cfg.update(features=list(self.levels[: d + 1]), top_features=self.top_features,
                       deep_supervision=False, head_mode="deepest", pruned_from=self.depth)
            pruned.config = cfg  # type: ignore[attr-defined]
        return pruned
