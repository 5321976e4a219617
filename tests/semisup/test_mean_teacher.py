"""Mean teacher: the EMA formula and its warm-up, the sigmoid ramp-up, consistency (zero for identical networks
and inputs, flips undone for segmentation), the unlabelled stream, kill-and-resume of the teacher through
``Trainer.save_state``/``load_state``, and a short real run that logs the semi terms."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from aemia.semisup import (
    MeanTeacherConfig,
    MeanTeacherHook,
    UnlabelledStream,
    consistency_loss,
    ema_alpha,
    ema_update,
    perturb,
    resolve_settings,
    sigmoid_rampup,
    unflip,
)
from aemia.semisup.mean_teacher import step_generator
from aemia.train import ArrayDataset, Hook, TrainConfig, Trainer


def _fake_trainer(model: nn.Module, step: int = 0, steps_per_epoch: int = 4) -> SimpleNamespace:
    return SimpleNamespace(model=model, global_step=step, steps_per_epoch=lambda: steps_per_epoch,
                           device=torch.device("cpu"), rank=0, world_size=1, autocast=contextlib.nullcontext)


def _stream(n: int = 6, size: int = 8, channels: int = 1, batch: int = 2) -> UnlabelledStream:
    images = np.random.default_rng(0).random((n, channels, size, size)).astype(np.float32)
    return UnlabelledStream(images, batch, seed=0)


# --------------------------------------------------------------------------------------------- EMA
def test_ema_alpha_warm_up_then_decay() -> None:
    assert ema_alpha(0, 0.99) == 0.0  # first update: the teacher becomes the student
    assert ema_alpha(1, 0.99) == pytest.approx(0.5)
    assert ema_alpha(9, 0.99) == pytest.approx(0.9)
    assert ema_alpha(99, 0.99) == pytest.approx(0.99)
    assert ema_alpha(10_000, 0.99) == 0.99


def test_ema_update_is_exact_on_parameters() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    student.train()
    student(torch.randn(8, 3))  # moves the running statistics and the batch counter
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p))
        teacher[1].running_mean.add_(1.0)
        teacher[1].num_batches_tracked.fill_(17)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s = student.state_dict()
    ema_update(teacher, student, 0.7)
    after = teacher.state_dict()
    params = {k for k, _ in teacher.named_parameters()}
    for k, v in after.items():
        if k in params:
            assert torch.allclose(v, 0.7 * before[k] + 0.3 * s[k], atol=1e-7), k
        else:  # buffers are the teacher's own (its forward passes in training mode update them)
            assert torch.equal(v, before[k]), k


def test_hook_updates_teacher_with_the_papers_alpha() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(1, 2, 3, padding=1)
    hook = MeanTeacherHook(_stream(), MeanTeacherConfig(ema_decay=0.99, eval_teacher=False))
    trainer = _fake_trainer(model)
    hook.on_fit_start(trainer)
    assert hook.teacher is not None
    for step in (1, 2, 3, 150):  # the trainer counts the step before on_batch_end
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        t_before = copy.deepcopy(hook.teacher.state_dict())
        trainer.global_step = step
        hook.on_batch_end(trainer, 0, 0.0)
        a = min(1 - 1 / (step + 1), 0.99)
        for k, v in hook.teacher.state_dict().items():
            assert torch.allclose(v, a * t_before[k] + (1 - a) * model.state_dict()[k], atol=1e-7)
    assert not any(p.requires_grad for p in hook.teacher.parameters())


# --------------------------------------------------------------------------------------------- ramp-up
def test_sigmoid_rampup_values() -> None:
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(25, 10) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    values = [sigmoid_rampup(t, 10) for t in np.linspace(0, 10, 21)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_hook_weight_ramps_over_fractional_epochs() -> None:
    hook = MeanTeacherHook(_stream(), MeanTeacherConfig(weight=10.0, rampup_epochs=2.0))
    assert hook.current_weight(_fake_trainer(nn.Identity(), step=0)) == pytest.approx(10 * math.exp(-5))
    assert hook.current_weight(_fake_trainer(nn.Identity(), step=4)) == pytest.approx(10 * math.exp(-1.25))  # 1 of 2 epochs
    assert hook.current_weight(_fake_trainer(nn.Identity(), step=8)) == pytest.approx(10.0)


def test_resolve_settings_defaults() -> None:
    mt = resolve_settings("mean_teacher", "segmentation", epochs=20)
    assert (mt.method, mt.weight, mt.threshold, mt.ema_decay, mt.rampup_epochs) == ("mean-teacher", 0.1, None, 0.99, 6.0)
    assert resolve_settings("mean-teacher", "classification", epochs=20).weight == 10.0
    assert resolve_settings("mean-teacher", "segmentation", epochs=20, weight=3.0).weight == 3.0
    with pytest.raises(ValueError):
        resolve_settings("temporal-ensembling", "segmentation", epochs=20)


# --------------------------------------------------------------------------------------------- consistency
def test_consistency_is_zero_for_identical_networks_without_perturbation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))  # no batch norm
    hook = MeanTeacherHook(_stream(), MeanTeacherConfig(noise=0.0, flip=False, weight=5.0, rampup_epochs=0))
    trainer = _fake_trainer(model)
    hook.on_fit_start(trainer)
    base = torch.tensor(0.25)
    out = hook.on_loss(trainer, (), None, base)
    assert float(out.detach()) == pytest.approx(0.25, abs=1e-7)
    assert hook._sums["loss"] == pytest.approx(0.0, abs=1e-12)
    # with perturbation the term is positive, and it has a gradient into the student only
    hook2 = MeanTeacherHook(_stream(), MeanTeacherConfig(noise=0.5, flip=True, weight=5.0, rampup_epochs=0))
    hook2.on_fit_start(trainer)
    out2 = hook2.on_loss(trainer, (), None, torch.tensor(0.25))
    assert float(out2.detach()) > 0.25
    out2.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is None for p in hook2.teacher.parameters())


def test_consistency_loss_values() -> None:
    a = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    assert float(consistency_loss(a, a)) == 0.0
    p = torch.softmax(a, 1)
    q = torch.softmax(torch.zeros(2, 2), 1)
    assert float(consistency_loss(a, torch.zeros(2, 2))) == pytest.approx(float(((p - q) ** 2).mean()))


def test_flips_are_undone_for_segmentation() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8)
    net = nn.Conv2d(1, 2, 1)  # pixel-wise, so it commutes with flips
    xs, fs = perturb(x, step_generator(0, 3, 0), noise=0.0, flip=True)
    xt, ft = perturb(x, step_generator(0, 3, 1), noise=0.0, flip=True)
    assert fs.any() and not torch.equal(fs, ft)
    with torch.no_grad():
        ys, yt = unflip(net(xs), fs), unflip(net(xt), ft)
        assert torch.allclose(ys, net(x), atol=1e-6)
        assert float(consistency_loss(ys, yt)) == pytest.approx(0.0, abs=1e-12)
        assert float(consistency_loss(net(xs), net(xt))) > 1e-4  # compared without undoing: not consistent
    # image-level outputs are not flipped back
    logits = torch.randn(6, 3)
    assert torch.equal(unflip(logits, fs), logits)


def test_perturbation_noise_scales_with_the_image_std() -> None:
    x = torch.rand(4, 1, 32, 32) * 10
    y, _ = perturb(x, step_generator(1, 0, 0), noise=0.15, flip=False)
    ratio = float((y - x).std() / x.flatten(1).std(1).mean())
    assert 0.12 < ratio < 0.18


def test_unlabelled_stream_is_seeded_and_cycles() -> None:
    a, b = _stream(n=5, batch=3), _stream(n=5, batch=3)
    a.start_epoch(2)
    b.start_epoch(2)
    batches = [a.next_batch() for _ in range(4)]  # 12 images from 5: cycles twice
    assert all(torch.equal(x, y) for x, y in zip(batches, [b.next_batch() for _ in range(4)]))
    assert batches[0].shape == (3, 1, 8, 8)
    b.start_epoch(3)
    assert not torch.equal(batches[0], b.next_batch())
    with pytest.raises(ValueError):
        UnlabelledStream(np.zeros((0, 1, 4, 4), np.float32), 2)


# --------------------------------------------------------------------------------------------- resume
def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 1, 16, 16)).astype(np.float32)
    labels = np.zeros((20, 16, 16), np.uint8)
    for i in range(20):
        r, c = rng.integers(4, 12, 2)
        labels[i, r - 3 : r + 3, c - 3 : c + 3] = 1
        images[i, 0][labels[i] == 1] += 1.5
    return images, labels


class _StopAfterFirstEpoch(Hook):
    def on_epoch_end(self, trainer, epoch, logs) -> None:  # type: ignore[no-untyped-def]
        trainer.should_stop = True


def _trainer(run: Path, hooks: list[Hook]) -> Trainer:
    from aemia.nets import create_model

    torch.manual_seed(0)
    images, labels = _data()
    model = create_model("unet", 2, 1, 2, features=(4, 8))
    return Trainer(model, ArrayDataset(images[:8], labels[:8], seed=0), ArrayDataset(images[16:], labels[16:]),
                   TrainConfig(epochs=2, batch_size=4, lr=3e-3, progress=False, amp="none", channels_last=False),
                   run, hooks=hooks)


def _mt_hook() -> MeanTeacherHook:
    images, _ = _data()
    return MeanTeacherHook(UnlabelledStream(images[8:16], 4, seed=0), MeanTeacherConfig(rampup_epochs=1.0), seed=0)


def test_kill_and_resume_restores_the_teacher(tmp_path: Path) -> None:
    full_hook = _mt_hook()
    _trainer(tmp_path / "full", [full_hook]).fit()

    first = _mt_hook()
    _trainer(tmp_path / "killed", [first, _StopAfterFirstEpoch()]).fit()  # "killed" after epoch 0's checkpoint
    saved = {k: v.clone() for k, v in first.teacher.state_dict().items()}

    resumed_hook = _mt_hook()
    resumed = _trainer(tmp_path / "killed", [resumed_hook])
    resumed.load_state()
    resumed_hook.on_fit_start(resumed)  # what fit(resume=True) does next
    assert all(torch.equal(resumed_hook.teacher.state_dict()[k], v) for k, v in saved.items())

    resumed_hook2 = _mt_hook()
    _trainer(tmp_path / "killed", [resumed_hook2]).fit(resume=True)
    a, b = full_hook.teacher.state_dict(), resumed_hook2.teacher.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    log_full = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    log_res = [json.loads(x) for x in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log_res] == [0, 1]
    for ra, rb in zip(log_full, log_res):
        assert ra["semi_loss"] == pytest.approx(rb["semi_loss"], abs=1e-6)
        assert ra["val_dice"] == pytest.approx(rb["val_dice"], abs=1e-9)


def test_state_tensors_default_is_empty() -> None:
    hook = Hook()
    assert hook.state_tensors() == {}
    hook.load_state_tensors({"x": torch.zeros(1)})  # no-op


# --------------------------------------------------------------------------------------------- real run
@pytest.mark.needs_data("pneumoniamnist")
def test_short_real_run_logs_the_consistency_term(tmp_path: Path) -> None:
    from aemia.recipes.run import train_run
    from aemia.runs import RunConfig, RunFolder

    cfg = RunConfig(dataset="pneumoniamnist", model="resnet", preset="tiny", label_fraction=0.05, semi="mean-teacher",
                    train=TrainConfig(epochs=1, batch_size=16, progress=False))
    run = tmp_path / "pn_mt"
    metrics = train_run(cfg, run)
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["semi_loss"] > 0 and 0 < log[0]["semi_weight"] <= 10.0
    assert metrics["run"]["semi"] == "mean-teacher" and metrics["run"]["semi_weight"] == 10.0
    assert metrics["run"]["semi_unlabelled_cases"] == 4708 - 236
    assert json.loads((run / "metrics.json").read_text())["run"]["semi_evaluated_with"] == "teacher"
    assert RunFolder(run).config().semi == "mean-teacher"
    assert (run / "figures" / "semi.png").stat().st_size > 1000
    assert 0.0 <= metrics["classification"]["auc"]["mean"] <= 1.0


@pytest.mark.needs_data("pneumoniamnist")
def test_ramp_up_is_a_share_of_the_epochs_raised_by_min_steps(tmp_path: Path) -> None:
    """aemia train raises epochs to reach --min-steps; the ramp-up must follow (30% of 4 epochs, not of 1)."""
    from aemia.recipes.run import train_run
    from aemia.runs import RunConfig, RunFolder

    cfg = RunConfig(dataset="pneumoniamnist", model="resnet", preset="tiny", label_fraction=0.05, semi="mean-teacher",
                    train=TrainConfig(epochs=1, min_steps=60, batch_size=16, progress=False))  # 236 cases: 15 steps
    metrics = train_run(cfg, tmp_path / "pn_mt_steps")
    assert RunFolder(tmp_path / "pn_mt_steps").config().train.epochs == 4
    assert metrics["run"]["semi_rampup_epochs"] == pytest.approx(0.3 * 4)


# --------------------------------------------------------------------------------------------- teacher BN
def test_reestimate_batchnorm_is_the_cumulative_average_and_keeps_weights_mode_and_momentum() -> None:
    from aemia.semisup.mean_teacher import reestimate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(4, 1, 8, 8) * (i + 1) + i for i in range(3)]
    assert reestimate_batchnorm(model, iter(batches)) == 3
    bn = model[1]
    with torch.no_grad():
        feats = [model[0](b) for b in batches]  # equal-sized batches: the average of batch means is the mean
    torch.testing.assert_close(bn.running_mean, torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0))
    assert not model.training and bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert reestimate_batchnorm(model, iter([])) == 0  # nothing seen: statistics untouched
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("teacher_bn", ["clean", "own"])
def test_the_evaluated_teacher_carries_clean_labelled_batch_statistics(tmp_path: Path, teacher_bn: str) -> None:
    from aemia.semisup.mean_teacher import reestimate_batchnorm

    images, _ = _data()
    hook = MeanTeacherHook(UnlabelledStream(images[8:16], 4, seed=0),
                           MeanTeacherConfig(rampup_epochs=1.0, teacher_bn=teacher_bn), seed=0)
    trainer = _trainer(tmp_path / teacher_bn, [hook])
    trainer.fit()
    final = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert all(torch.equal(final[k], v) for k, v in hook.teacher.state_dict().items())  # the teacher is the model
    reference = copy.deepcopy(hook.teacher)
    reestimate_batchnorm(reference, (b[0] for b in trainer._loader(trainer.cfg.epochs - 1)))
    means = [k for k in final if k.endswith("running_mean")]
    assert means
    same = all(torch.allclose(final[k], reference.state_dict()[k], atol=1e-6) for k in means)
    assert same == (teacher_bn == "clean")


def test_unknown_teacher_bn_is_refused() -> None:
    with pytest.raises(ValueError, match="teacher_bn"):
        MeanTeacherHook(_stream(), MeanTeacherConfig(teacher_bn="student"))
