"""Pseudo-labelling (Lee, ICML workshop 2013) with a FixMatch-style confidence threshold (Sohn et al., NeurIPS
2020), as a trainer hook for 2D segmentation and classification.

What the papers fix, and what we use:

* Lee 2013: the class of maximum predicted probability on an unlabelled sample is used as if it were its true
  label, with cross-entropy, and the unlabelled term's weight is ramped up from 0 (Lee: linearly from epoch 100
  to 600 up to α_f = 3). We ramp with the mean-teacher sigmoid ``w_max·exp(−5(1 − t)²)`` over
  ``rampup_epochs`` (one ramp-up shape for both methods; a toolkit choice).
* FixMatch: only predictions whose maximum probability is ≥ τ become targets (τ = 0.95); the target comes from a
  weakly augmented view and the loss is taken on a strongly augmented view; the unlabelled loss is averaged over
  *all* unlabelled samples, accepted or not, so it grows with the accepted share; weight λ_u = 1; μ = 7
  unlabelled images per labelled one (we use 1 on CPU).
* Weak view here: the stream's light augmentation only. Strong view: the same plus Gaussian noise (σ = 0.15 of the
  image's standard deviation) and random flips, flipped back on the output for segmentation.
* Segmentation applies the threshold per pixel, default 0.9 (toolkit choice: pixel posteriors of a briefly
  trained CPU network seldom reach 0.95 away from the easy background).

Class balance (toolkit choice; the papers do not balance):

* ``reweight`` (default): an accepted target of class ``c`` weighs ``1/(K·f_c)``, clipped to ``max_class_weight``
  (10), where ``f_c`` is the running share of class ``c`` among accepted targets (moving average over steps,
  momentum 0.9, kept in the checkpoint). A rare class (the foreground, the minority diagnosis) weighs as much in
  total as a frequent one, so it is not swamped.
* ``cap`` (classification): in every batch keep at most as many accepted targets per class as the rarest class
  has (the most confident ones). With small batches this often keeps nothing; hence not the default.
* ``none``.

Targets come from the current model (eval mode, no gradient; FixMatch) or, with ``source="ema"``, from an EMA
teacher as in :mod:`aemia.semisup.mean_teacher` (which then also serves validation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from aemia.semisup.mean_teacher import (
    UnlabelledHook,
    UnlabelledStream,
    class_probs,
    perturb,
    step_generator,
    two_class_logits,
    unflip,
)

if TYPE_CHECKING:
    from aemia.train.trainer import Trainer

BALANCE = ("reweight", "cap", "none")
SOURCES = ("model", "ema")


@dataclass
class PseudoLabelConfig:
    """Pseudo-label settings; see the module docstring for where each default comes from."""

    weight: float = 1.0  # λ_u (FixMatch)
    threshold: float = 0.95  # τ (FixMatch); run default for segmentation 0.9
    rampup_epochs: float = 5.0
    source: str = "model"  # model | ema
    ema_decay: float = 0.99  # source="ema" only
    balance: str = "reweight"  # reweight | cap | none
    max_class_weight: float = 10.0
    freq_momentum: float = 0.9
    noise: float = 0.15
    flip: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"pseudo-label threshold must be in (0, 1], got {self.threshold}")
        if self.balance not in BALANCE:
            raise ValueError(f"balance must be one of {BALANCE}, got {self.balance!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


def select_pseudo_labels(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets (argmax), confidences (max probability) and the accepted mask (confidence ≥ ``threshold``) for
    probabilities ``(B, K)`` or ``(B, K, *S)``."""
    conf, target = probs.max(dim=1)
    return target, conf, conf >= threshold


def cap_per_class(target: torch.Tensor, conf: torch.Tensor, accepted: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Keep, per class, at most as many accepted samples as the rarest class has (the most confident ones).

    ``target``, ``conf``, ``accepted``: ``(B,)``. A class with no accepted sample makes the cap 0."""
    counts = [int((accepted & (target == c)).sum()) for c in range(n_classes)]
    cap = min(counts)
    keep = torch.zeros_like(accepted)
    if cap == 0:
        return keep
    for c in range(n_classes):
        idx = torch.nonzero(accepted & (target == c)).flatten()
        best = idx[torch.argsort(conf[idx], descending=True, stable=True)[:cap]]
        keep[best] = True
    return keep


def class_weights(freq: torch.Tensor, max_weight: float = 10.0) -> torch.Tensor:
    """``1/(K·f_c)`` clipped to ``max_weight``: 1 for every class when the shares are equal."""
    k = freq.numel()
    share = freq / freq.sum().clamp_min(1e-12)
    return (1.0 / (k * share.clamp_min(1e-12))).clamp(max=max_weight)


def pseudo_label_loss(student_logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ weights·CE(student, target) / number of samples (or pixels)`` (FixMatch: averaged over all unlabelled
    samples; ``weights`` is 0 where a target was rejected)."""
    ce = F.cross_entropy(two_class_logits(student_logits).float(), target, reduction="none")
    return (weights * ce).sum() / max(ce.numel(), 1)


class PseudoLabelHook(UnlabelledHook):
    """Adds ``w(t)``·thresholded, class-balanced pseudo-label cross-entropy on an unlabelled batch to every
    step's loss.

    Logs per epoch: ``semi_loss`` (mean unweighted pseudo-label loss), ``semi_weight`` and ``semi_accepted``
    (the fraction of unlabelled images, or pixels, whose target was accepted)."""

    def __init__(self, stream: UnlabelledStream, n_classes: int, config: PseudoLabelConfig | None = None,
                 seed: int = 0) -> None:
        self.config = config or PseudoLabelConfig()
        ema = self.config.ema_decay if self.config.source == "ema" else None
        super().__init__(stream, self.config.weight, self.config.rampup_epochs, ema, True, seed)
        self.n_classes = max(int(n_classes), 2)
        self.freq = torch.full((self.n_classes,), 1.0 / self.n_classes, dtype=torch.float64)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"class_freq": self.freq.clone()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if "class_freq" in tensors:
            self.freq = tensors["class_freq"].to(torch.float64).clone()

    def targets(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo-labels and per-sample (per-pixel) loss weights for teacher probabilities; updates the running
        class shares used by ``reweight``."""
        cfg = self.config
        target, conf, accepted = select_pseudo_labels(probs, cfg.threshold)
        if cfg.balance == "cap":
            if target.ndim != 1:
                raise ValueError("balance='cap' is for classification; segmentation uses 'reweight'")
            accepted = cap_per_class(target, conf, accepted, self.n_classes)
        counts = torch.bincount(target[accepted].flatten().cpu(), minlength=self.n_classes)[: self.n_classes]
        if int(counts.sum()) > 0:
            share = counts.to(torch.float64) / counts.sum()
            self.freq = cfg.freq_momentum * self.freq + (1.0 - cfg.freq_momentum) * share
        weights = accepted.float()
        if cfg.balance == "reweight":
            cw = class_weights(self.freq, cfg.max_class_weight).to(probs.device, torch.float32)
            weights = weights * cw[target]
        return target, weights

    def on_loss(self, trainer: "Trainer", batch: tuple[torch.Tensor, ...], outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        x = self.next_unlabelled(trainer)
        model = trainer.model
        with torch.no_grad(), trainer.autocast():
            if self.teacher is not None:
                logits = self.teacher(x)
            else:
                model.eval()
                try:
                    logits = model(x)
                finally:
                    model.train()
        target, weights = self.targets(class_probs(logits.float()))
        xs, fs = perturb(x, step_generator(self.seed, trainer.global_step, 0), self.config.noise, self.config.flip)
        with trainer.autocast():
            student_out = model(xs)
        student_logits = unflip(student_out.float(), fs)
        pl = pseudo_label_loss(student_logits, target, weights)
        w = self.current_weight(trainer)
        self._last_weight = w
        self._accumulate(loss=float(pl.detach()), accepted=float((weights > 0).float().mean()))
        return loss + w * pl

    def epoch_logs(self, n: float) -> dict[str, float]:
        return {"semi_accepted": self._sums.get("accepted", 0.0) / n}
