"""Weight averaging for the evaluated model: an exponential moving average (EMA) of the trained weights.

``ema_t = d_t · ema_{t-1} + (1 − d_t) · w_t`` after every optimiser step, with the warm-up rule
``d_t = min(decay, (1 + t) / (10 + t))`` (TensorFlow's ``ExponentialMovingAverage(num_updates=t)``), so a
short run is not dominated by its random initialisation. Floating buffers (batch-norm running statistics)
are averaged the same way; integer buffers are copied. Validation, ``best`` checkpoints and the model a
fit hands back are the average; the optimiser keeps training the raw weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """An averaged copy of ``model`` (same device and memory format), updated by :meth:`update`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.updates = 0

    def rate(self) -> float:
        """The decay used for the next update."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.rate()
        src = model.state_dict()
        for name, avg in self.model.state_dict().items():
            new = src[name].detach()
            if avg.dtype.is_floating_point:
                avg.lerp_(new.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(new)
        self.updates += 1

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"ema/{k}": v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
        out["ema_state/updates"] = torch.tensor([self.updates], dtype=torch.int64)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        state = {k[len("ema/"):]: v for k, v in tensors.items() if k.startswith("ema/")}
        if state:
            self.model.load_state_dict(state)
            self.updates = int(tensors["ema_state/updates"][0])
