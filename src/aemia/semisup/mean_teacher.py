"""Mean teacher (Tarvainen & Valpola, NeurIPS 2017) as a trainer hook, for 2D segmentation and classification.

What the paper (and its reference code) fixes, and what we use:

* The teacher is an exponential moving average of the student after every optimiser step:
  ``θ'_t = α·θ'_{t-1} + (1 − α)·θ_t`` with ``α = min(1 − 1/(t + 1), decay)``, ``t`` = optimiser steps taken so
  far (the warm-up makes the teacher the plain average of the first steps). ``decay`` 0.99 (the paper's value
  during ramp-up). Only the parameters are averaged: as in the paper's code the teacher runs in training mode
  on its own inputs (batch statistics, dropout), so its batch-norm running statistics are its own, measured on
  its own weights, and these are what evaluation with the teacher uses.
* Consistency cost: the mean squared difference between the student's and the teacher's softmax probabilities
  (mean over classes, pixels and images), each network seeing its own random perturbation of the same
  unlabelled image. Total loss = supervised loss + ``w(t)``·consistency; the teacher gets no gradient.
* Ramp-up of the weight (Laine & Aila, ICLR 2017, used by the paper): ``w(t) = w_max·exp(−5(1 − t)²)`` with
  ``t`` the fraction of the ramp-up done (0 → 1 over ``rampup_epochs``, counted in optimiser steps), then
  ``w_max``. The paper ramps over 80 of 180–300 epochs (about 30%); :func:`default_rampup_epochs` keeps that share.
* Perturbations: Gaussian input noise with σ = 0.15 of the image's standard deviation (the paper: σ = 0.15 on
  normalised inputs) and random flips. Segmentation outputs are flipped back before they are compared, so
  student and teacher are compared pixel by pixel in the image's own frame.

Teacher batch-norm statistics (``teacher_bn``; measured in ``benchmarks/semi_mt_diagnosis.py``): the paper's
rule (``"own"``) leaves the teacher with running statistics of *noisy unlabelled* inputs, and on Kvasir-SEG that
teacher scored 0.497 test Dice against 0.590 for the same weights with statistics re-estimated on the clean
labelled images (3 seeds, 600 steps; one seed 0.395 vs 0.593). The default ``"clean"`` therefore re-estimates the
teacher's batch-norm statistics (cumulative average over one pass of the epoch's labelled batches, weights
untouched) every time the teacher is evaluated and at the end of ``fit``. Networks without batch norm are
unaffected.

CPU/toolkit choices (not from the paper): one unlabelled batch of the labelled batch size per step;
validation and the ``best`` checkpoint use the teacher (common practice), and the teacher's weights replace the
model's at the end of ``fit``. Multi-process (DDP) training is not covered by tests for these hooks.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from aemia.train.data import AugmentConfig, augment
from aemia.train.hooks import Hook

if TYPE_CHECKING:
    from aemia.train.trainer import Trainer

#: Share of the epochs spent ramping the weight up (the paper: 80 ramp-up epochs of 180–300).
RAMPUP_SHARE = 0.3
#: How the EMA teacher's batch-norm statistics are kept (module docstring)
TEACHER_BN = ("clean", "own")


def default_rampup_epochs(epochs: int) -> float:
    """The ramp-up length for a run of ``epochs`` epochs: 30% of it, at least one epoch."""
    return max(1.0, RAMPUP_SHARE * epochs)


def sigmoid_rampup(progress: float, length: float) -> float:
    """``exp(−5(1 − t)²)`` with ``t = clip(progress / length, 0, 1)``; 1 when ``length`` ≤ 0."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def ema_alpha(step: int, decay: float) -> float:
    """The paper's EMA coefficient after ``step`` optimiser steps: ``min(1 − 1/(step + 1), decay)``."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """``teacher ← α·teacher + (1 − α)·student`` for the parameters; buffers (batch-norm statistics) are left
    to the teacher's own forward passes."""
    for tp, sp in zip(teacher.parameters(), student.parameters()):
        tp.mul_(alpha).add_(sp.detach(), alpha=1.0 - alpha)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute ``model``'s batch-norm running statistics as the cumulative average over ``batches`` (inputs only,
    in training mode, no gradient); the weights are untouched and the model's mode and momenta are restored.
    Returns the number of batches seen (0 leaves the statistics as they were)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    n = 0
    for x in batches:
        model(x)
        n += 1
    model.train(was_training)
    for m, (mean, var, count, momentum) in zip(bns, saved):
        m.momentum = momentum
        if n == 0:
            m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
    return n


def class_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over channels in float32; a single channel is read as a sigmoid (background, foreground)."""
    return torch.softmax(two_class_logits(logits).float(), dim=1)


def two_class_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits with at least two channels: one sigmoid channel ``z`` becomes ``[0, z]`` (same probabilities)."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the softmax probabilities; no gradient flows into the teacher."""
    return ((class_probs(student_logits) - class_probs(teacher_logits).detach()) ** 2).mean()


def perturb(x: torch.Tensor, generator: torch.Generator, noise: float, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips (each spatial axis with p = 0.5, per image) then Gaussian noise of σ = ``noise``·std(image).

    Returns the perturbed batch and the flips (bool ``(B, spatial dims)``) for :func:`unflip`."""
    b, spatial = x.shape[0], x.ndim - 2
    flips = torch.rand(b, spatial, generator=generator) < 0.5 if flip else torch.zeros(b, spatial, dtype=torch.bool)
    out = _apply_flips(x, flips.to(x.device))
    if noise > 0:
        std = x.float().flatten(1).std(dim=1).view(-1, *([1] * (x.ndim - 1)))
        out = out + (noise * std * torch.randn(x.shape, generator=generator).to(x.device)).to(x.dtype)
    return out, flips


def unflip(y: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Undo :func:`perturb`'s flips on a dense output ``(B, C, *S)``; image-level outputs ``(B, C)`` pass through."""
    if y.ndim <= 2:
        return y
    return _apply_flips(y, flips.to(y.device))


def _apply_flips(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    for ax in range(flips.shape[1]):
        mask = flips[:, ax].view(-1, *([1] * (x.ndim - 1)))
        x = torch.where(mask, x.flip(2 + ax), x)
    return x


def step_generator(seed: int, step: int, view: int) -> torch.Generator:
    """A generator for one view at one optimiser step: the same draws after a kill and resume."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) * 7 + int(view)) % (2**63 - 1))


class UnlabelledStream:
    """Batches of unlabelled images (N, C, H, W): a seeded order per epoch, cycled when used up, each image
    lightly augmented (flips, 90° rotations, brightness/contrast) from ``[seed, epoch, position]``.

    The stream restarts at every epoch, so a run resumed at an epoch boundary draws the same batches."""

    def __init__(self, images: np.ndarray, batch_size: int, seed: int = 0, augment_cfg: AugmentConfig | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if len(images) == 0:
            raise ValueError("the unlabelled set is empty")
        self.images = images
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.augment_cfg = augment_cfg if augment_cfg is not None else AugmentConfig()
        self.rank, self.world_size = rank, world_size
        self.start_epoch(0)

    def __len__(self) -> int:
        return len(self.images)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.cursor, self.cycle = int(epoch), 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        order = np.random.default_rng([self.seed, self.epoch, self.cycle, 2]).permutation(len(self.images))
        return order[self.rank :: self.world_size] if len(order) >= self.world_size else order

    def next_batch(self) -> torch.Tensor:
        out = []
        for _ in range(self.batch_size):
            if self.cursor >= len(self._order):
                self.cycle += 1
                self._order, self.cursor = self._permutation(), 0
            i = int(self._order[self.cursor])
            rng = np.random.default_rng([self.seed, self.epoch, self.cycle, self.cursor, 3])
            img, _ = augment(self.images[i], None, rng, self.augment_cfg)
            out.append(torch.from_numpy(img))
            self.cursor += 1
        return torch.stack(out)


class UnlabelledHook(Hook):
    """What mean teacher and pseudo-labelling share: the unlabelled stream, an optional EMA teacher (updated in
    ``on_batch_end``, used for validation when ``eval_teacher``), the ramped weight, per-epoch logging
    (``semi_loss``, ``semi_weight`` and whatever :meth:`epoch_logs` adds) and resumable state."""

    def __init__(self, stream: UnlabelledStream, weight: float, rampup_epochs: float, ema_decay: float | None,
                 eval_teacher: bool, seed: int, teacher_bn: str = "clean") -> None:
        if weight < 0:
            raise ValueError(f"the unlabelled loss weight must be ≥ 0, got {weight}")
        if teacher_bn not in TEACHER_BN:
            raise ValueError(f"teacher_bn must be one of {TEACHER_BN}, got {teacher_bn!r}")
        self.teacher_bn = teacher_bn
        self._epoch = 0
        self.stream = stream
        self.weight = float(weight)
        self.rampup_epochs = float(rampup_epochs)
        self.ema_decay = ema_decay
        self.eval_teacher = bool(eval_teacher and ema_decay is not None)
        # an evaluated EMA teacher is the run's weight average: the trainer's own EMA stays off
        self.averages_weights = self.eval_teacher
        self.seed = int(seed)
        self.teacher: nn.Module | None = None
        self._pending: dict[str, torch.Tensor] = {}
        self._backup: dict[str, torch.Tensor] | None = None
        self._sums: dict[str, float] = {}
        self._last_weight = 0.0

    # -- weight, teacher --------------------------------------------------------------------------------
    def current_weight(self, trainer: "Trainer") -> float:
        """``w_max·exp(−5(1 − t)²)`` at the current step (ramp-up counted in fractional epochs)."""
        progress = trainer.global_step / max(trainer.steps_per_epoch(), 1)
        return self.weight * sigmoid_rampup(progress, self.rampup_epochs)

    def _accumulate(self, **values: float) -> None:
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._sums["n"] = self._sums.get("n", 0.0) + 1.0

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.stream.rank, self.stream.world_size = trainer.rank, trainer.world_size
        if self.ema_decay is not None:
            self.teacher = copy.deepcopy(trainer.model)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            teacher_state = {k[len("teacher/"):]: v for k, v in self._pending.items() if k.startswith("teacher/")}
            if teacher_state:
                self.teacher.load_state_dict(teacher_state)
            self.teacher.train()  # batch statistics, like the student (the paper's code)
        self.load_extra_state({k: v for k, v in self._pending.items() if not k.startswith("teacher/")})
        self._pending = {}

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        self._epoch = epoch
        self.stream.start_epoch(epoch)
        self._sums = {}

    def on_batch_end(self, trainer: "Trainer", step: int, loss: float) -> None:
        if self.teacher is not None and self.ema_decay is not None:
            ema_update(self.teacher, trainer.model, ema_alpha(trainer.global_step, self.ema_decay))
        if self.eval_teacher and step == trainer.steps_per_epoch() - 1:
            self._swap_in(trainer)  # validation and the best checkpoint see the teacher

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        self._swap_out(trainer)  # the student trains on and is what last.safetensors holds
        n = max(self._sums.get("n", 0.0), 1.0)
        logs["semi_loss"] = self._sums.get("loss", 0.0) / n
        logs["semi_weight"] = self._last_weight
        logs.update(self.epoch_logs(n))

    def epoch_logs(self, n: float) -> dict[str, float]:
        """Extra per-epoch log entries (``n`` = steps this epoch)."""
        return {}

    def on_fit_end(self, trainer: "Trainer") -> None:
        self._swap_out(trainer)
        if not self.eval_teacher or self.teacher is None:
            return
        self._clean_teacher_bn(trainer)
        trainer.model.load_state_dict(self.teacher.state_dict())
        if trainer.best_epoch is None and trainer.is_main and trainer.history.epochs:
            from aemia.nets.checkpoint import save_checkpoint

            save_checkpoint(trainer.model, trainer.ckpt_dir / "best",
                            {"epoch": trainer.history.epochs[-1]["epoch"], "val_metric": None, "task": trainer.task})

    def _clean_teacher_bn(self, trainer: "Trainer") -> None:
        """``teacher_bn="clean"``: the teacher's batch-norm statistics from one pass over this epoch's (clean,
        augmented as in supervised training) labelled batches."""
        if self.teacher is None or self.teacher_bn != "clean":
            return
        batches = (b[0].to(trainer.device) for b in trainer._loader(self._epoch))
        with trainer.autocast():
            reestimate_batchnorm(self.teacher, batches)

    def _swap_in(self, trainer: "Trainer") -> None:
        if self.teacher is None or self._backup is not None:
            return
        self._clean_teacher_bn(trainer)
        self._backup = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        trainer.model.load_state_dict(self.teacher.state_dict())

    def _swap_out(self, trainer: "Trainer") -> None:
        if self._backup is not None:
            trainer.model.load_state_dict(self._backup)
            self._backup = None

    # -- state ------------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"teacher/{k}": v for k, v in self.teacher.state_dict().items()} if self.teacher is not None else {}
        out.update(self.extra_state())
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._pending = dict(tensors)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None: ...

    # -- helpers ----------------------------------------------------------------------------------------
    def next_unlabelled(self, trainer: "Trainer") -> torch.Tensor:
        return self.stream.next_batch().to(trainer.device)


@dataclass
class MeanTeacherConfig:
    """Mean-teacher settings; see the module docstring for where each default comes from."""

    weight: float = 1.0  # w_max (run defaults: aemia.semisup.default_weight)
    rampup_epochs: float = 5.0
    ema_decay: float = 0.99
    noise: float = 0.15  # σ as a fraction of the image's standard deviation
    flip: bool = True
    eval_teacher: bool = True
    teacher_bn: str = "clean"  # "own": the paper's code (statistics of its noisy unlabelled passes)


class MeanTeacherHook(UnlabelledHook):
    """Adds ``w(t)``·MSE(softmax(student(view₁)), softmax(teacher(view₂))) on an unlabelled batch to every
    step's loss (``on_loss``) and updates the EMA teacher after every optimiser step (``on_batch_end``).

    Logs per epoch: ``semi_loss`` (mean unweighted consistency) and ``semi_weight`` (``w`` at the last step)."""

    def __init__(self, stream: UnlabelledStream, config: MeanTeacherConfig | None = None, seed: int = 0) -> None:
        self.config = config or MeanTeacherConfig()
        if not 0.0 <= self.config.ema_decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {self.config.ema_decay}")
        super().__init__(stream, self.config.weight, self.config.rampup_epochs, self.config.ema_decay,
                         self.config.eval_teacher, seed, self.config.teacher_bn)

    def on_loss(self, trainer: "Trainer", batch: tuple[torch.Tensor, ...], outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None, "on_fit_start builds the teacher"
        x = self.next_unlabelled(trainer)
        cfg = self.config
        xs, fs = perturb(x, step_generator(self.seed, trainer.global_step, 0), cfg.noise, cfg.flip)
        xt, ft = perturb(x, step_generator(self.seed, trainer.global_step, 1), cfg.noise, cfg.flip)
        with trainer.autocast():  # the networks under autocast, the consistency loss in fp32
            with torch.no_grad():
                teacher_out = self.teacher(xt)
            student_out = trainer.model(xs)
        teacher_logits = unflip(teacher_out.float(), ft)
        student_logits = unflip(student_out.float(), fs)
        cons = consistency_loss(student_logits, teacher_logits)
        w = self.current_weight(trainer)
        self._last_weight = w
        self._accumulate(loss=float(cons.detach()))
        return loss + w * cons
