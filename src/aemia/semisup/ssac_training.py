"""What SSAC's two training phases (:mod:`aemia.semisup.ssac`) add to the one :class:`~aemia.train.trainer.Trainer`.

* :class:`GroupTrainer`: the Trainer with an Adam optimiser over explicit parameter groups, each stepping at the
  Trainer's scheduled rate × its ``lr_scale`` (phase 2 fine-tunes R's encoder at 0.1 × the classifier's rate;
  phase 1 steps the encoder + decoder only, the discriminator having its own optimiser).
* :class:`TrainAccuracy`: a hook adding the training accuracy of each epoch to the log.
* :func:`optimizer_tensors` / :func:`load_optimizer_tensors`: an extra optimiser's state as flat tensors, so a
  hook that owns one (the AAE's discriminator and generator steps) resumes exactly through
  :meth:`~aemia.train.hooks.Hook.state_tensors`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from aemia.train.hooks import Hook
from aemia.train.trainer import Trainer


class ScaledAdam(torch.optim.Adam):
    """Adam whose parameter groups may carry ``lr_scale``: the Trainer sets one rate on every group before each
    step, and each group steps at that rate × its scale."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        rates = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * float(group.get("lr_scale", 1.0))
        try:
            return super().step(closure)
        finally:
            for group, rate in zip(self.param_groups, rates):
                group["lr"] = rate


class GroupTrainer(Trainer):
    """:class:`Trainer` optimising ``groups`` (dicts with ``params`` and optionally ``lr_scale``) with
    :class:`ScaledAdam` at the config's rate, schedule and weight decay, instead of Adam over all parameters."""

    def __init__(self, *args: Any, groups: Iterable[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.optimizer = ScaledAdam(list(groups), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)


class TrainAccuracy(Hook):
    """Adds ``train_acc`` (share of training samples whose arg-max logit is the target, this epoch) to the log."""

    def __init__(self) -> None:
        self.correct, self.seen = 0, 0

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.correct, self.seen = 0, 0

    def on_loss(self, trainer: Trainer, batch: tuple[torch.Tensor, ...], outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        target = batch[1].to(outputs.device)
        self.correct += int((outputs.detach().argmax(1) == target).sum())
        self.seen += int(target.shape[0])
        return loss

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        logs["train_acc"] = self.correct / max(self.seen, 1)


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The per-parameter state of ``optimizer`` as ``{prefix}/{param index}/{key}`` tensors (the param groups'
    settings are not stored: they come from the recipe)."""
    out: dict[str, torch.Tensor] = {}
    for pid, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}/{pid}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`optimizer_tensors` stored under ``prefix`` (nothing stored: the state stays empty)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "/"):
            pid, key = name[len(prefix) + 1:].split("/", 1)
            state.setdefault(int(pid), {})[key] = value
    if state:
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


__all__ = ["GroupTrainer", "ScaledAdam", "TrainAccuracy", "load_optimizer_tensors",
           "optimizer_tensors"]
