"""Convolutions that keep small fp32 CPU feature maps on oneDNN (MKLDNN) instead of PyTorch's im2col fallback.

Why: for fp32 CPU tensors PyTorch picks oneDNN only if the batch is > 1 or ``N*C*D*H > 20480`` (a heuristic
in ``ConvParams::use_mkldnn``, "for some case, native is faster"). At batch 1 every deep level of a 3D
network (e.g. 16 channels at 32^3, 32 at 16^3) falls back to ``slow_conv3d``, whose forward and backward
were 10-25x slower than oneDNN's on this project's 2-core AMD EPYC (profiled in
``benchmarks/unetpp_vs_monai.py``'s README section). bf16 (autocast) tensors always use oneDNN.

What: :class:`Conv2d` / :class:`Conv3d` are drop-in subclasses of the torch modules (same parameters and
state-dict keys). Where the heuristic would choose the fallback for an fp32 CPU input to a stride-1,
dilation-1, ungrouped, zero-padded "same" convolution (odd kernel, padding (k-1)/2), they compute the
forward and both gradients with ``aten::mkldnn_convolution``:

* forward: ``mkldnn_convolution(x, w, b)``;
* grad input: the convolution of the output gradient with the spatially flipped, in/out-swapped kernel;
* grad weight: the correlation of input and output gradient, written as a convolution whose batch axis
  is the input channels and whose kernel is the output gradient (the batch axis becomes the summed axis).

Same function, different summation order: results agree with the fallback to fp32 rounding
(tests/nets/test_fastconv.py). Everything else (bf16 under autocast, large maps, GPU, strided
convolutions) goes through the unchanged torch path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# PyTorch's threshold on N*C*D*H (N*C*H*W in 2D) below which batch-1 fp32 convolutions leave oneDNN
_NATIVE_THRESHOLD = 20480


def _mkldnn_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, padding: list[int]) -> torch.Tensor:
    ones = [1] * (x.ndim - 2)
    return torch.ops.aten.mkldnn_convolution(x, w, b, padding, ones, ones, 1)


class _SameConvMkldnn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                padding: list[int]) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.padding = padding
        ctx.has_bias = b is not None
        return _mkldnn_conv(x, w, b, padding)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        pad = ctx.padding
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            spatial = tuple(range(2, w.ndim))
            gx = _mkldnn_conv(g, w.transpose(0, 1).flip(spatial), None, pad)
        if ctx.needs_input_grad[1]:
            # gw[o, i, k] = sum_{n, s} x[n, i, s + k - p] g[n, o, s]: batch <- in-channels, channels <- batch
            gw = _mkldnn_conv(x.transpose(0, 1), g.transpose(0, 1), None, pad).transpose(0, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(dim=(0, *range(2, g.ndim)))
        return gx, gw, gb, None


def _route(conv: nn.modules.conv._ConvNd, x: torch.Tensor) -> bool:
    """True where torch would fall back to the im2col path although oneDNN computes the same function."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[0] != 1:
        return False
    if torch.is_autocast_enabled("cpu") or not torch.backends.mkldnn.is_available() \
            or not torch.backends.mkldnn.enabled:
        return False
    if conv.groups != 1 or conv.padding_mode != "zeros" or any(s != 1 for s in conv.stride) \
            or any(d != 1 for d in conv.dilation) or isinstance(conv.padding, str):
        return False
    if any(k % 2 == 0 or p != (k - 1) // 2 for k, p in zip(conv.kernel_size, conv.padding)):
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    return x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] <= _NATIVE_THRESHOLD


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that keeps small batch-1 fp32 CPU maps on oneDNN (see module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _route(self, x):
            return _SameConvMkldnn.apply(x, self.weight, self.bias, list(self.padding))
        return super().forward(x)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that keeps small batch-1 fp32 CPU maps on oneDNN (see module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _route(self, x):
            return _SameConvMkldnn.apply(x, self.weight, self.bias, list(self.padding))
        return super().forward(x)
