"""Foundation X lock-release (which parameters train in each phase) and Ark's teacher schedule (METHODS.md §6.6-6.7),
checked inside the one Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aemia.train.data import EpochDataset
from aemia.train.hooks import Hook
from aemia.train.trainer import TrainConfig, Trainer
from aemia.universal.loss import UniversalLoss
from aemia.universal.model import UniversalModel
from aemia.universal.schedule import ArkTeacher, LockRelease, locked_parameters


class _Tiny(EpochDataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        g = torch.Generator().manual_seed(i)
        x = torch.rand(3, 16, 16, generator=g)
        mask = (x[:1] > 0.5).float()
        y = (torch.cat([mask, mask]), torch.tensor([True, False]), torch.tensor(0), torch.tensor(i % 3))
        return x, y, x.flip(-1)


class _Snapshots(Hook):
    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.trainable: list[set[str]] = []

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        self.states.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})
        self.trainable.append({k for k, v in trainer.model.named_parameters() if v.requires_grad})


def _model() -> UniversalModel:
    torch.manual_seed(0)
    return UniversalModel(2, 3, ["a", "b"], features=(8, 8, 16), embedding="learned", heads={"d": 3})


def test_lock_release_phases_train_the_right_parameters(tmp_path: Path) -> None:
    model = _model()
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    encoder = set(locked_parameters(model))
    assert encoder and all(k.startswith("backbone.encoder.") for k in encoder)
    snap, ark = _Snapshots(), ArkTeacher(3)
    cfg = TrainConfig(epochs=3, batch_size=2, lr=1e-2, amp="none", ema=0.0, progress=False, deep_supervision=False)
    Trainer(model, _Tiny(), None, cfg, tmp_path, hooks=[LockRelease(1), ark, snap], loss=UniversalLoss([0])).fit()
    everything = {k for k, _ in model.named_parameters()}
    assert snap.trainable[0] == everything - encoder and snap.trainable[1] == everything
    locked = snap.states[0]
    assert all(torch.equal(locked[k], init[k]) for k in encoder)  # frozen during the lock phase
    assert any(not torch.equal(locked[k], init[k]) for k in everything - encoder)  # heads and decoder trained
    assert any(not torch.equal(snap.states[1][k], locked[k]) for k in encoder)  # released
    assert ark.teacher is not None and not any(p.requires_grad for p in ark.teacher.parameters())
    assert all(p.grad is None for p in ark.teacher.parameters())


def test_ark_coefficient_and_teacher_momentum_schedules() -> None:
    ark = ArkTeacher(11)
    cs = [ark.coefficient(e) for e in range(11)]
    assert cs[0] == 0.0 and abs(cs[-1] - 0.5) < 1e-12 and all(a <= b for a, b in zip(cs, cs[1:]))
    assert abs(cs[5] - 0.25) < 1e-12  # cosine: half-way at the middle
    ms = [ark.teacher_momentum(e) for e in range(11)]
    assert abs(ms[0] - 0.9) < 1e-12 and abs(ms[-1] - 1.0) < 1e-12


def test_teacher_update_is_the_ema() -> None:
    student, ark = _model(), ArkTeacher(2)
    ark.teacher = _model()
    for p in ark.teacher.parameters():
        torch.nn.init.zeros_(p)
    ark.update_teacher(student, 0.9)
    w = dict(student.named_parameters())["controller.weight"]
    torch.testing.assert_close(dict(ark.teacher.named_parameters())["controller.weight"], 0.1 * w.detach())
