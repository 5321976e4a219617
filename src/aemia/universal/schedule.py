"""Training across data sets as Trainer hooks: Ark's EMA teacher and consistency, Foundation X's lock-release.

* :class:`ArkTeacher` (Ma et al., MICCAI 2023, ``jlianglab/Ark``; METHODS.md §6.6): the loss of each batch
  becomes ``(1 − c)·task + c·MSE(student feature(view 1), teacher feature(view 2))`` with ``c`` on a cosine
  schedule from 0 to 0.5 over the run; the teacher is an EMA of the student whose momentum follows a cosine
  schedule from 0.9 to 1, updated once per data-set turn (Ark's ``ema_mode`` "epoch"). The teacher gets no
  gradient.
* :class:`LockRelease` (Foundation X, WACV 2025, ``jlianglab/Foundation_X``; §6.7): for the first
  ``lock_epochs`` epochs the backbone's encoder is frozen (``requires_grad`` off; Foundation X's
  ``Freeze_Backbone_and_Localization_Encoder``) and only the decoder and the heads train; then everything is
  released.
"""

from __future__ import annotations

import copy
import math
import re
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from aemia.train.hooks import Hook

if TYPE_CHECKING:
    from aemia.train.trainer import Trainer


def cosine_ramp(t: float, start: float, end: float) -> float:
    """``start`` at t = 0 to ``end`` at t = 1 along half a cosine."""
    t = min(max(t, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


class ArkTeacher(Hook):
    def __init__(self, epochs: int, c_max: float = 0.5, momentum: tuple[float, float] = (0.9, 1.0)) -> None:
        self.epochs = max(int(epochs), 1)
        self.c_max = c_max
        self.momentum = momentum
        self.teacher: nn.Module | None = None
        self._loaded: dict[str, torch.Tensor] = {}
        self.epoch = 0
        self._consistency: list[float] = []

    def coefficient(self, epoch: int) -> float:
        """c of epoch ``epoch``: 0 → ``c_max``."""
        return cosine_ramp(epoch / max(self.epochs - 1, 1), 0.0, self.c_max)

    def teacher_momentum(self, epoch: int) -> float:
        return cosine_ramp(epoch / max(self.epochs - 1, 1), *self.momentum)

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.teacher = copy.deepcopy(trainer.model)
        self.teacher.requires_grad_(False)
        if self._loaded:
            self.teacher.load_state_dict(self._loaded)

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        self.epoch = epoch
        self._consistency = []

    def on_loss(self, trainer: "Trainer", batch: tuple[Any, ...], outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        c = self.coefficient(self.epoch)
        if c == 0.0 or self.teacher is None:
            return loss
        view2 = batch[2].to(trainer.device)
        self.teacher.eval()
        with torch.no_grad(), trainer.autocast():
            target = self.teacher.forward_all(view2)["feature"].float()
        consistency = F.mse_loss(outputs[1].float(), target)
        self._consistency.append(float(consistency.detach()))
        return (1.0 - c) * loss + c * consistency

    @torch.no_grad()
    def update_teacher(self, student: nn.Module, momentum: float) -> None:
        assert self.teacher is not None
        src = student.state_dict()
        for name, value in self.teacher.state_dict().items():
            new = src[name].detach()
            if value.dtype.is_floating_point:
                value.mul_(momentum).add_(new.to(value.dtype), alpha=1.0 - momentum)
            else:
                value.copy_(new)

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        m = self.teacher_momentum(epoch)
        self.update_teacher(trainer.model, m)
        logs.update({"ark_c": round(self.coefficient(epoch), 4), "teacher_momentum": round(m, 4)})
        if self._consistency:
            logs["consistency"] = float(sum(self._consistency) / len(self._consistency))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.teacher is None else {f"teacher/{k}": v for k, v in self.teacher.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._loaded = {k[len("teacher/"):]: v for k, v in tensors.items() if k.startswith("teacher/")}


_ENCODER = re.compile(r"backbone\.(encoder\.|nodes\.\d+_0\.)")


def locked_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters lock-release freezes: the backbone's encoder (U-Net ``backbone.encoder.*``,
    UNet++ the first-column nodes ``backbone.nodes.<i>_0.*``)."""
    return [n for n, _ in model.named_parameters() if _ENCODER.match(n)]


class LockRelease(Hook):
    def __init__(self, lock_epochs: int) -> None:
        self.lock_epochs = int(lock_epochs)

    def phase(self, epoch: int) -> str:
        return "lock" if epoch < self.lock_epochs else "release"

    def apply(self, model: nn.Module, epoch: int) -> None:
        locked = set(locked_parameters(model)) if self.phase(epoch) == "lock" else set()
        for name, p in model.named_parameters():
            p.requires_grad_(name not in locked)

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        self.apply(trainer.model, epoch)

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        logs["phase"] = self.phase(epoch)


__all__ = ["ArkTeacher", "LockRelease", "cosine_ramp", "locked_parameters"]
