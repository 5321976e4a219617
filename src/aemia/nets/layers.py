"""Dimension-generic building blocks shared by the networks (2D and 3D from one code path)."""

from __future__ import annotations

import torch
from torch import nn

from aemia.nets import fastconv

NORMS = ("batch", "instance", "none")
UPSAMPLE_MODES = ("deconv", "nearest", "linear")


def conv_nd(dims: int) -> type[nn.Module]:
    """The convolution class: torch's, except that small batch-1 fp32 CPU maps stay on oneDNN (``fastconv``)."""
    return {2: fastconv.Conv2d, 3: fastconv.Conv3d}[_check_dims(dims)]


def conv_transpose_nd(dims: int) -> type[nn.Module]:
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[_check_dims(dims)]


def max_pool_nd(dims: int) -> type[nn.Module]:
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[_check_dims(dims)]


def norm_nd(dims: int, norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[_check_dims(dims)](channels)
    if norm == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[_check_dims(dims)](channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


def global_average(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling of (N, C, *S) feature maps to an (N, C) vector."""
    return torch.flatten(x.mean(dim=tuple(range(2, x.ndim))), 1)


def working_layout(x: torch.Tensor) -> torch.Tensor:
    """The memory layout a network computes in: 2D CPU maps in channels-last (NHWC), whose oneDNN
    convolutions and batch norms ran the UNet++ fp32 train step ~30% faster than NCHW on this project's CPU;
    3D maps keep the caller's layout (NCDHW was as fast or faster in fp32; ``channels_last_3d`` stays
    available as the fast mode). Values are unchanged up to fp32 rounding of the convolution order."""
    if x.ndim == 4 and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _check_dims(dims: int) -> int:
    if dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {dims}")
    return dims


class ConvBlock(nn.Sequential):
    """H(·) of the UNet/UNet++ papers: two (conv3 → norm → ReLU) layers, optional dropout between."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, norm: str = "batch", dropout: float = 0.0) -> None:
        conv = conv_nd(dims)
        bias = norm == "none"
        layers: list[nn.Module] = [
            conv(in_ch, out_ch, 3, padding=1, bias=bias),
            norm_nd(dims, norm, out_ch),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append({2: nn.Dropout2d, 3: nn.Dropout3d}[dims](dropout))
        layers += [
            conv(out_ch, out_ch, 3, padding=1, bias=bias),
            norm_nd(dims, norm, out_ch),
            nn.ReLU(inplace=True),
        ]
        super().__init__(*layers)


class Up(nn.Module):
    """×2 upsampling: a learned stride-2 transposed conv (to ``out_ch``) or parameter-free interpolation."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, mode: str = "deconv") -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode {mode!r}; choose one of {UPSAMPLE_MODES}")
        self.mode = mode
        self.out_channels = out_ch if mode == "deconv" else in_ch
        if mode == "deconv":
            self.op: nn.Module = conv_transpose_nd(dims)(in_ch, out_ch, kernel_size=2, stride=2)
        else:
            interp = "nearest" if mode == "nearest" else ("bilinear" if dims == 2 else "trilinear")
            kwargs = {} if interp == "nearest" else {"align_corners": False}
            self.op = nn.Upsample(scale_factor=2, mode=interp, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)
