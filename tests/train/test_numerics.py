"""Training numerics and reproducibility: non-finite steps never reach the weights, the fp32 fallback, the
``amp="auto"`` start-up check, the weight average, and same seed → same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aemia.nets import create_model, load_checkpoint
from aemia.train import ArrayDataset, AugmentConfig, Hook, TrainConfig, Trainer
from aemia.train import trainer as trainer_module
from aemia.train.averaging import WeightEMA


def _data(n: int = 12, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, 1, size, size)).astype(np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r, c = rng.integers(6, size - 6, 2)
        labels[i, r - 4 : r + 4, c - 4 : c + 4] = 1
        images[i, 0][labels[i] == 1] += 1.5
    return images, labels


def _trainer(run: Path, hooks: list[Hook] = (), **cfg: object) -> Trainer:
    torch.manual_seed(0)
    images, labels = _data()
    settings = {"epochs": 2, "batch_size": 4, "lr": 3e-3, "progress": False, "amp": "none", **cfg}
    return Trainer(create_model("unet", 2, 1, 2, features=(4, 8)), ArrayDataset(images[:8], labels[:8], augment=AugmentConfig(), seed=0),
                   ArrayDataset(images[8:], labels[8:]), TrainConfig(**settings), run, hooks=list(hooks))


class PoisonLoss(Hook):
    """Makes the loss NaN at the given optimiser steps (counted from 0 before the step runs)."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_loss(self, trainer: Trainer, batch, outputs, loss: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return loss * float("nan") if trainer.global_step in self.steps else loss


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_non_finite_step_is_skipped_and_never_reaches_the_weights(tmp_path: Path) -> None:
    t = _trainer(tmp_path / "r", hooks=[PoisonLoss({1})], ema=0.0)
    batch = next(iter(t._loader(0)))
    t.resolve_amp(batch)
    t.train_step(batch, 10)  # step 0: a real update
    before = _weights(t.model)
    opt_before = {k: v.clone() for k, v in t.optimizer.state_dict()["state"][0].items() if torch.is_tensor(v)}
    assert np.isnan(t.train_step(batch, 10))  # step 1: poisoned
    after = _weights(t.model)
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step changed the weights"
    opt_after = t.optimizer.state_dict()["state"][0]
    assert all(torch.equal(v, opt_after[k]) for k, v in opt_before.items()), "a skipped step changed Adam's moments"
    assert t.skipped_steps == 1 and t.global_step == 2
    assert np.isfinite(t.train_step(batch, 10)) and t.bad_steps == 0


def test_the_epoch_log_counts_skipped_steps(tmp_path: Path) -> None:
    t = _trainer(tmp_path / "r", hooks=[PoisonLoss({2})])
    t.fit()
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert log[0].get("skipped_steps") is None and log[1]["skipped_steps"] == 1 and np.isfinite(log[1]["train_loss"])


def test_consecutive_bad_steps_fall_back_to_fp32_then_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # amp is only the label here: the NaNs are injected, so nothing depends on bf16 rounding
    t = _trainer(tmp_path / "r", hooks=[PoisonLoss(set(range(3)))], amp="bf16", max_bad_steps=3)
    batch = next(iter(t._loader(0)))
    t.resolve_amp(batch)
    assert t.amp == "bf16"
    for _ in range(3):
        t.train_step(batch, 10)
    assert t.amp == "none" and t.bad_steps == 0
    assert "continuing in fp32" in capsys.readouterr().out
    t2 = _trainer(tmp_path / "r2", hooks=[PoisonLoss(set(range(10)))], max_bad_steps=2)
    with pytest.raises(FloatingPointError, match="lower --lr"):
        t2.fit()


def test_amp_auto_uses_fp32_when_the_startup_check_disagrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_module, "amp_dtype", lambda amp, device: torch.bfloat16 if amp != "none" else None)
    monkeypatch.setattr(trainer_module, "check_amp", lambda *a, **k: (False, 0.7, float("nan")))
    t = _trainer(tmp_path / "r", amp="auto")
    t.resolve_amp(next(iter(t._loader(0))))
    assert t.amp == "none"
    monkeypatch.setattr(trainer_module, "check_amp", lambda *a, **k: (True, 0.7, 0.7))
    t = _trainer(tmp_path / "r2", amp="auto")
    t.resolve_amp(next(iter(t._loader(0))))
    assert t.amp == "bf16"


def test_check_amp_agrees_with_itself_in_fp32() -> None:
    """check_amp compares a copy: the caller's batch-norm statistics stay untouched."""
    model = create_model("unet", 2, 1, 2, features=(4, 8))
    state = _weights(model)
    x = torch.randn(2, 1, 16, 16)
    y = torch.zeros(2, 16, 16, dtype=torch.long)
    agrees, ref, low = trainer_module.check_amp(model, torch.nn.CrossEntropyLoss(), x, y, torch.float32)
    assert agrees and ref == pytest.approx(low)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_weight_ema_follows_the_closed_form() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.9)
    expected = 0.0
    for t, w in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            model.weight.fill_(w)
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * w
        ema.update(model)
        assert float(ema.model.weight) == pytest.approx(expected)


def test_the_best_checkpoint_and_the_fitted_model_are_the_weight_average(tmp_path: Path) -> None:
    t = _trainer(tmp_path / "r", ema=0.9, epochs=1)
    t.fit()
    best = load_checkpoint(tmp_path / "r" / "checkpoints" / "best")[0].state_dict()
    assert all(torch.allclose(best[k].float(), v.float()) for k, v in t.ema.model.state_dict().items())
    assert all(torch.equal(t.ema.model.state_dict()[k], v) for k, v in t.model.state_dict().items())


def test_same_seed_same_machine_same_numbers(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        t = _trainer(tmp_path / name, epochs=2)
        result = t.fit()
        runs.append((result["history"], _weights(t.model)))
    (ha, wa), (hb, wb) = runs
    assert [(r["train_loss"], r["val_dice"]) for r in ha] == [(r["train_loss"], r["val_dice"]) for r in hb]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_weight_decay_zero_is_a_real_zero_for_adamw() -> None:
    params = [torch.nn.Parameter(torch.ones(1))]
    assert trainer_module.make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.0), params).defaults["weight_decay"] == 0.0
    assert trainer_module.make_optimizer(TrainConfig(optimizer="adamw"), params).defaults["weight_decay"] == 1e-2


def test_aemia_amp_env_overrides_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from aemia.nets.predict import amp_dtype

    cpu = torch.device("cpu")
    monkeypatch.setenv("AEMIA_AMP", "none")
    assert amp_dtype("auto", cpu) is None and amp_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setenv("AEMIA_AMP", "bf16")
    assert amp_dtype("auto", cpu) is torch.bfloat16 and amp_dtype("none", cpu) is None


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    t = _trainer(tmp_path / "r", epochs=10, early_stopping=2)
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.59, 0.9, 0.9, 0.9, 0.9, 0.9])  # best at epoch 1, then 2 epochs worse
    t.validate = lambda: {"val_metric": next(scores)}  # type: ignore[method-assign]
    result = t.fit()
    epochs = [h["epoch"] for h in result["history"]]
    assert epochs == [0, 1, 2, 3] and result["best_epoch"] == 1
    assert result["history"][-1]["early_stopped"] is True
    resumed = _trainer(tmp_path / "r", epochs=10, early_stopping=2)
    assert resumed.fit(resume=True)["history"] == result["history"]  # a stopped run stays stopped on resume
