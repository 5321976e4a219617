"""Mixed precision checks of the training loop: network outputs back to fp32, and whether one batch's loss
under autocast agrees with fp32 (the Trainer's ``amp="auto"`` on CPU)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def as_float(obj: Any) -> Any:
    """Network outputs in fp32 (tensors, or lists/tuples of them) for the loss."""
    if torch.is_tensor(obj):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_float(o) for o in obj)
    return obj


def check_amp(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: Any, dtype: torch.dtype,
              rtol: float = 0.05, atol: float = 0.02) -> tuple[bool, float, float]:
    """Does one batch's loss under ``dtype`` autocast agree with fp32? Runs on a copy in training mode (so the
    caller's batch-norm statistics are untouched). Returns (agrees, fp32 loss, low-precision loss)."""
    probe = copy.deepcopy(model).train()
    with torch.no_grad():
        ref = float(loss_fn(as_float(probe(x)), y))
        with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = probe(x)
        low = float(loss_fn(as_float(out), y))
    agrees = math.isfinite(ref) and math.isfinite(low) and abs(low - ref) <= atol + rtol * abs(ref)
    return agrees, ref, low


__all__ = ["as_float", "check_amp"]
