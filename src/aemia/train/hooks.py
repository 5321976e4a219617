"""Trainer hooks: everything an experiment adds to the one training loop goes through these methods.

A hook may read and change ``trainer`` (e.g. set ``trainer.should_stop``) and may add to the loss in
``on_loss``; semi-supervised, continual and self-supervised recipes are hooks, not new trainers.

Order per run: ``on_fit_start`` → per epoch ``on_epoch_start`` → per batch ``on_loss`` → ``on_step_end``
(only after an optimiser step that was taken, not a skipped non-finite one) → ``on_batch_end`` → after the
epoch's validation ``on_epoch_end`` → ``on_fit_end``. A hook that takes optimiser steps of its own (an
adversary's) returns its optimisers from :meth:`Hook.optimizers`; the Trainer checkpoints and restores them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from aemia.train.trainer import Trainer


class Hook:
    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None: ...
    def on_loss(self, trainer: "Trainer", batch: tuple[torch.Tensor, ...], outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        return loss
    def on_step_end(self, trainer: "Trainer", batch: tuple[torch.Tensor, ...], outputs: Any) -> None:
        """After the Trainer's optimiser step on ``batch`` (and its weight average's update); ``outputs`` are the
        network's outputs of that step's forward pass, in fp32, still attached to the graph."""
    def on_batch_end(self, trainer: "Trainer", step: int, loss: float) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors that ``Trainer.save_state`` stores (as ``hook/<i>/<name>``) so the hook resumes exactly."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_tensors` (called by ``Trainer.load_state``, before ``on_fit_start``)."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers the hook owns, by name; ``Trainer.save_state`` stores their state with the checkpoint and
        ``Trainer.load_state`` restores it (before ``on_fit_start``)."""
        return {}


class JsonlLogger(Hook):
    """Appends one JSON line per epoch to ``log.jsonl`` (rank 0 only). On resume, drops lines past the resumed
    epoch so the log reads as one uninterrupted run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_fit_start(self, trainer: "Trainer") -> None:
        if not trainer.is_main or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line).get("epoch", -1) < trainer.start_epoch]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        if trainer.is_main:
            with self.path.open("a") as f:
                f.write(json.dumps(logs) + "\n")
                f.flush()


class EarlyStopping(Hook):
    """Stops when the monitored validation metric has not improved for ``patience`` epochs."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        if self.patience > 0 and trainer.best_epoch is not None and epoch - trainer.best_epoch >= self.patience:
            trainer.should_stop = True
            logs["early_stopped"] = True
