"""What SSAC's two training phases (:mod:`aemia.semisup.ssac`) add to the one :class:`~aemia.train.trainer.Trainer`.

* Both phases give the Trainer explicit parameter groups (``param_groups``), each stepping at the scheduled
  rate × its ``lr_scale``: phase 2 fine-tunes R's encoder at 0.1 × the classifier's rate; phase 1 steps the
  encoder + decoder only, the discriminator having its own optimiser.
* :class:`TrainAccuracy`: a hook adding the training accuracy of each epoch to the log.
* :func:`train_aae` (phase 1, with the :class:`AAERegularisation` hook) and :func:`train_classifier` (phase 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aemia.pretrain.restore import RestorationDataset, identity_pair
from aemia.semisup.ssac_nets import AAE, SSACConfig, SSACNet, discriminator_loss, generator_loss, reconstruction_loss
from aemia.train.data import ArrayDataset, AugmentConfig
from aemia.train.hooks import Hook
from aemia.train.trainer import TrainConfig, Trainer


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


# ------------------------------------------------------------------------------------------------ training


def _train_config(cfg: SSACConfig, phase: str) -> TrainConfig:
    """Phase 1 (``aae``): constant rate ``lr_aae``; phase 2 (``cls``): ``lr_cls`` with cosine decay to 0 and
    ``weight_decay``. Adam, no deep supervision, CPU (the evaluation here runs on numpy arrays)."""
    if phase == "aae":
        return TrainConfig(epochs=cfg.epochs_aae, batch_size=cfg.batch_aae, lr=cfg.lr_aae, optimizer="adam",
                           schedule="constant", deep_supervision=False, seed=cfg.seed, amp=cfg.amp,
                           channels_last=False, device="cpu", progress=cfg.progress)
    return TrainConfig(epochs=cfg.epochs_cls, batch_size=cfg.batch_cls, lr=cfg.lr_cls, optimizer="adam",
                       weight_decay=cfg.weight_decay, schedule="cosine", loss="ce", deep_supervision=False,
                       seed=cfg.seed, amp=cfg.amp, channels_last=False, device="cpu", progress=cfg.progress)


class _Reconstruction(nn.Module):
    """The Trainer's loss in phase 1: :func:`reconstruction_loss` of the AAE's image logits (outputs ``(z, logits)``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(outputs[1].float(), target.float(), self.kind)


class AAERegularisation(Hook):
    """The regularisation phase of Makhzani et al., after each reconstruction step the Trainer takes.

    The discriminator learns prior samples (1) vs this batch's codes (0) — the codes of the reconstruction
    forward pass, one encoder update older, to save a forward pass — then the encoder, as the generator, is
    updated to fool it (Adam ``lr_disc`` / ``lr_gen``, β1 = 0.5). Logs per epoch the mean ``d_loss``,
    ``g_loss`` and ``d_acc`` (discriminator accuracy; 0.5 = codes indistinguishable from the prior). Its two
    optimisers and the prior sampler are saved with the Trainer's checkpoint, so a resumed run is identical.
    """

    def __init__(self, aae: AAE, cfg: SSACConfig) -> None:
        self.aae = aae
        self.prior_std = cfg.prior_std
        self.opt_d = torch.optim.Adam(aae.discriminator.parameters(), lr=cfg.lr_disc, betas=(0.5, 0.999))
        self.opt_g = torch.optim.Adam(aae.encoder.parameters(), lr=cfg.lr_gen, betas=(0.5, 0.999))
        self.prior = torch.Generator().manual_seed(cfg.seed)
        self.sums = np.zeros(4)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.sums = np.zeros(4)

    def on_step_end(self, trainer: Trainer, batch: tuple[torch.Tensor, ...], outputs: Any) -> None:
        x, z = batch[0].to(trainer.device), outputs[0].detach().float()
        disc = self.aae.discriminator
        zp = (torch.randn(z.shape, generator=self.prior) * self.prior_std).to(z.device)
        dp, dc = disc(zp), disc(z)
        d_loss = discriminator_loss(dp, dc)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        g_loss = generator_loss(disc(self.aae.encoder(x)))
        self.opt_g.zero_grad(set_to_none=True)
        disc.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        d_acc = 0.5 * ((dp > 0).float().mean() + (dc <= 0).float().mean())
        self.sums += np.array([len(x), d_loss.item() * len(x), g_loss.item() * len(x), float(d_acc) * len(x)])

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        n = max(self.sums[0], 1.0)
        logs.update(d_loss=float(self.sums[1] / n), g_loss=float(self.sums[2] / n), d_acc=float(self.sums[3] / n))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"d": self.opt_d, "g": self.opt_g}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"prior_rng": self.prior.get_state()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "prior_rng" in tensors:
            self.prior.set_state(tensors["prior_rng"])


def train_aae(aae: AAE, images: np.ndarray, cfg: SSACConfig, run_dir: str | Path, resume: bool = False,
              hooks: Sequence[Hook] = ()) -> list[dict[str, float]]:
    """Phase 1 (Makhzani et al.) with the Trainer in ``run_dir``: per batch a reconstruction step (the Trainer's,
    Adam ``lr_aae`` on encoder + decoder), then :class:`AAERegularisation`'s discriminator and generator steps.

    Returns one record per epoch: ``epoch`` (from 1), mean reconstruction loss ``recon``, ``d_loss``, ``g_loss``
    and ``d_acc``. ``resume`` continues from ``run_dir``'s last checkpoint; ``hooks`` are added after the AAE's.
    """
    if cfg.epochs_aae == 0:
        return []
    groups = [{"params": list(aae.encoder.parameters()) + list(aae.decoder.parameters())}]
    trainer = Trainer(aae, RestorationDataset(images, identity_pair, cfg.seed), None, _train_config(cfg, "aae"), run_dir,
                           hooks=[AAERegularisation(aae, cfg), *hooks], task="restoration",
                           loss=_Reconstruction(cfg.recon_loss), param_groups=groups)
    history = trainer.fit(resume=resume)["history"]
    aae.eval()
    return [{"epoch": int(h["epoch"]) + 1, "recon": float(h["train_loss"]),
             **{k: float(h[k]) for k in ("d_loss", "g_loss", "d_acc")}} for h in history]


def train_classifier(model: nn.Module, images: np.ndarray, targets: np.ndarray, cfg: SSACConfig,
                     run_dir: str | Path, val: tuple[np.ndarray, np.ndarray] | None = None, resume: bool = False,
                     hooks: Sequence[Hook] = ()) -> list[dict[str, float]]:
    """Phase 2 with the Trainer in ``run_dir``: cross-entropy on the labelled images, Adam ``lr_cls`` with
    cosine decay; the same seeded batches and augmentation (flips, ±10% intensity) for every model.

    For an :class:`SSACNet` with ``encoder="finetune"`` the encoder trains at ``encoder_lr_scale`` × ``lr_cls``.
    Returns one record per epoch (``epoch`` from 1, training ``loss`` and ``train_acc``, ``val_auc`` if ``val``
    is given). The model returned trained is the last epoch's. ``resume`` continues from ``run_dir``.
    """
    if isinstance(model, SSACNet):
        groups = [{"params": list(model.classifier.parameters())}]
        if not model.freeze_encoder:
            groups.append({"params": list(model.encoder.parameters()), "lr_scale": cfg.encoder_lr_scale})
    else:
        groups = [{"params": list(model.parameters())}]
    aug = AugmentConfig(flip=True, rot90=False, intensity=0.1) if cfg.augment else None
    train_set = ArrayDataset(images, targets=targets, augment=aug, seed=cfg.seed)
    val_set = ArrayDataset(val[0], targets=val[1]) if val is not None else None
    trainer = Trainer(model, train_set, val_set, _train_config(cfg, "cls"), run_dir, hooks=[TrainAccuracy(), *hooks],
                      task="classification", param_groups=groups)
    history = trainer.fit(resume=resume)["history"]
    model.eval()
    out = []
    for h in history:
        rec = {"epoch": int(h["epoch"]) + 1, "loss": float(h["train_loss"]), "train_acc": float(h["train_acc"])}
        if "val_auc" in h:
            rec["val_auc"] = float(h["val_auc"])
        out.append(rec)
    return out


__all__ = ["AAERegularisation", "TrainAccuracy", "train_aae", "train_classifier"]
