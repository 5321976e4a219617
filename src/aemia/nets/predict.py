"""Turning a trained network into probabilities.

* 2D (or whole small volumes): batched forward passes.
* 3D larger than the training patch: MONAI's ``sliding_window_inference`` with Gaussian blending
  (overlap 0.5 by default, as nnU-Net).
* Optional flip test-time augmentation: mean of softmax over all flips of the spatial axes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
from collections.abc import Iterator, Sequence

import torch
from torch import nn


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``amp`` = ``none`` | ``bf16`` | ``fp16`` | ``auto`` (bf16 where the hardware runs it natively, unless the
    environment variable ``AEMIA_AMP`` names one of the others)."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp == "auto":
        forced = os.environ.get("AEMIA_AMP", "")
        if forced in ("none", "bf16", "fp16"):  # a machine-wide choice (the test suite sets none)
            return amp_dtype(forced, device)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    raise ValueError(f"amp must be none, bf16, fp16 or auto; got {amp!r}")


@contextlib.contextmanager
def autocast_context(amp: str, device: torch.device) -> Iterator[None]:
    dtype = amp_dtype(amp, device)
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def memory_format(spatial_dims: int) -> torch.memory_format:
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def _forward_probs(model: nn.Module, x: torch.Tensor, activation: str) -> torch.Tensor:
    logits = model(x).float()
    if activation == "sigmoid" or logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return logits.softmax(1)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    x: torch.Tensor,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    tta: bool = False,
    amp: str = "none",
    channels_last: bool = False,
    sw_batch_size: int = 2,
    activation: str = "softmax",
) -> torch.Tensor:
    """Class probabilities for a batch ``x`` (N, C, *S) on the model's device.

    With ``roi_size`` smaller than the input, a Gaussian-weighted sliding window covers the input (any size:
    MONAI pads internally). With ``tta``, the result is the mean over every combination of spatial flips.
    """
    device = next(model.parameters()).device
    spatial = x.ndim - 2
    x = x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=memory_format(spatial))
    model.eval()

    def run(inp: torch.Tensor) -> torch.Tensor:
        with autocast_context(amp, device):
            if roi_size is not None and any(s > r for s, r in zip(inp.shape[2:], roi_size)) or (
                roi_size is not None and any(s % (2 ** getattr(model, "depth", 0)) for s in inp.shape[2:])
            ):
                from monai.inferers import sliding_window_inference

                return sliding_window_inference(
                    inp, roi_size=tuple(roi_size), sw_batch_size=sw_batch_size,
                    predictor=lambda t: _forward_probs(model, t, activation), overlap=overlap, mode="gaussian",
                ).float()
            return _forward_probs(model, inp, activation)

    if not tta:
        return run(x)
    axes = list(range(2, 2 + spatial))
    total = None
    count = 0
    for r in range(len(axes) + 1):
        for flip in itertools.combinations(axes, r):
            inp = torch.flip(x, flip) if flip else x
            out = run(inp)
            out = torch.flip(out, flip) if flip else out
            total = out if total is None else total + out
            count += 1
    return total / count  # type: ignore[operator]
