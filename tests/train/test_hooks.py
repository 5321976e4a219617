"""Trainer extension points: per-group learning-rate scale, the order of hook calls, optimisers a hook owns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from aemia.train.data import ArrayDataset
from aemia.train.hooks import Hook
from aemia.train.trainer import TrainConfig, Trainer, lr_at


def _data(n: int = 8) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.random((n, 1, 4, 4), dtype=np.float32), targets=(np.arange(n) % 2).astype(np.int64))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Linear(4, 2))


def _cfg(**kw: Any) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, lr=1e-2, schedule="cosine", warmup=0.0, ema=0.0, amp="none",
                channels_last=False, device="cpu", progress=False, deep_supervision=False)
    return TrainConfig(**{**base, **kw})


class _Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.events.append("fit_start")

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.events.append("epoch_start")

    def on_loss(self, trainer: Trainer, batch: Any, outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        self.events.append("loss")
        return loss

    def on_step_end(self, trainer: Trainer, batch: Any, outputs: Any) -> None:
        self.events.append("step_end")

    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self.events.append("batch_end")

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        self.events.append("epoch_end")

    def on_fit_end(self, trainer: Trainer) -> None:
        self.events.append("fit_end")


def test_hooks_are_called_in_order(tmp_path: Path) -> None:
    rec = _Recorder()
    Trainer(_model(), _data(), None, _cfg(epochs=1, batch_size=8), tmp_path, hooks=[rec], task="classification").fit()
    assert rec.events == ["fit_start", "epoch_start", "loss", "step_end", "batch_end", "epoch_end", "fit_end"]
    rec = _Recorder()
    Trainer(_model(), _data(), None, _cfg(epochs=2), tmp_path / "two", hooks=[rec], task="classification").fit()
    epoch = ["epoch_start"] + ["loss", "step_end", "batch_end"] * 2 + ["epoch_end"]
    assert rec.events == ["fit_start", *epoch, *epoch, "fit_end"]


def test_a_skipped_non_finite_step_has_no_step_end(tmp_path: Path) -> None:
    class PoisonFirst(_Recorder):
        def on_loss(self, trainer: Trainer, batch: Any, outputs: Any, loss: torch.Tensor) -> torch.Tensor:
            super().on_loss(trainer, batch, outputs, loss)
            return loss * float("nan") if trainer.global_step == 0 else loss

    rec = PoisonFirst()
    Trainer(_model(), _data(), None, _cfg(epochs=1), tmp_path, hooks=[rec], task="classification").fit()
    assert rec.events[1:8] == ["epoch_start", "loss", "batch_end", "loss", "step_end", "batch_end", "epoch_end"]


def test_each_group_steps_at_the_scheduled_rate_times_its_scale(tmp_path: Path) -> None:
    model = _model()
    first, second = model[1], model[2]
    before = [p.detach().clone() for p in (first.weight, second.weight)]
    seen: list[tuple[int, list[float]]] = []
    moved: list[torch.Tensor] = []

    class Rates(Hook):
        def on_step_end(self, trainer: Trainer, batch: Any, outputs: Any) -> None:
            seen.append((trainer.global_step - 1, [g["lr"] for g in trainer.optimizer.param_groups]))
            if not moved:
                moved.extend((p.detach() - b).abs() for p, b in zip((first.weight, second.weight), before))

    cfg = _cfg(epochs=2)
    groups = [{"params": list(first.parameters())}, {"params": list(second.parameters()), "lr_scale": 0.1}]
    trainer = Trainer(model, _data(), None, cfg, tmp_path, hooks=[Rates()], task="classification", param_groups=groups)
    trainer.fit()
    total = cfg.epochs * trainer.steps_per_epoch()
    assert [s for s, _ in seen] == list(range(total)) == [0, 1, 2, 3]
    for step, (rate, scaled) in seen:
        assert rate == lr_at(cfg, step, total) and scaled == pytest.approx(0.1 * lr_at(cfg, step, total), rel=1e-12)
    assert seen[0][1] == [1e-2, 1e-3] and seen[-1][1][0] < seen[1][1][0]  # cosine decay
    # Adam's first step moves each weight by ~ its rate: the scaled group's by a tenth
    assert torch.median(moved[0]).item() == pytest.approx(1e-2, rel=1e-3)
    assert torch.median(moved[1]).item() == pytest.approx(1e-3, rel=1e-3)


class _Killed(Exception):
    pass


class _Adversary(Hook):
    """Owns an optimiser over a parameter outside the model; steps it after each of the Trainer's steps."""

    def __init__(self, kill_at: int = -1) -> None:
        torch.manual_seed(1)
        self.w = nn.Parameter(torch.randn(16))
        self.opt = torch.optim.Adam([self.w], lr=1e-2, betas=(0.5, 0.999))
        self.kill_at = kill_at

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if epoch == self.kill_at:
            raise _Killed

    def on_step_end(self, trainer: Trainer, batch: Any, outputs: Any) -> None:
        self.opt.zero_grad(set_to_none=True)
        ((batch[0].flatten(1) @ self.w) ** 2).mean().backward()
        self.opt.step()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adv": self.opt}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"w": self.w.detach()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.w.copy_(tensors["w"])


def test_optimisers_a_hook_owns_are_checkpointed(tmp_path: Path) -> None:
    full = _Adversary()
    Trainer(_model(), _data(), None, _cfg(epochs=3), tmp_path / "full", hooks=[full], task="classification").fit()
    with pytest.raises(_Killed):
        Trainer(_model(), _data(), None, _cfg(epochs=3), tmp_path / "cut", hooks=[_Adversary(kill_at=2)],
                task="classification").fit()
    resumed = _Adversary()  # a fresh process: the parameter and its optimiser's moments come from the checkpoint
    Trainer(_model(), _data(), None, _cfg(epochs=3), tmp_path / "cut", hooks=[resumed], task="classification").fit(resume=True)
    state_full, state_resumed = full.opt.state_dict()["state"][0], resumed.opt.state_dict()["state"][0]
    assert int(state_resumed["step"]) == int(state_full["step"]) == 6
    assert all(torch.equal(state_resumed[k], state_full[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert torch.equal(resumed.w, full.w)
