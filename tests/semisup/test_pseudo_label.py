"""Pseudo-labelling: thresholding, per-class cap and class-frequency weights on hand-made probabilities, the
FixMatch normalisation, resumable class shares, run wiring (defaults, 3D refused, CLI) and a short real run."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from aemia.errors import InputError
from aemia.semisup import (
    PseudoLabelConfig,
    PseudoLabelHook,
    UnlabelledStream,
    cap_per_class,
    class_weights,
    pseudo_label_loss,
    resolve_settings,
    select_pseudo_labels,
)
from aemia.train import TrainConfig


def _stream(n: int = 6, batch: int = 2) -> UnlabelledStream:
    return UnlabelledStream(np.random.default_rng(0).random((n, 1, 8, 8)).astype(np.float32), batch, seed=0)


def _fake_trainer(model: nn.Module, step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(model=model, global_step=step, steps_per_epoch=lambda: 4, device=torch.device("cpu"),
                           rank=0, world_size=1, autocast=contextlib.nullcontext)


PROBS = torch.tensor([
    [0.97, 0.03],  # 0, accepted
    [0.60, 0.40],  # 0, rejected
    [0.02, 0.98],  # 1, accepted
    [0.95, 0.05],  # 0, accepted (≥ threshold)
    [0.99, 0.01],  # 0, accepted
    [0.30, 0.70],  # 1, rejected
])


def test_threshold_selects_confident_predictions() -> None:
    target, conf, accepted = select_pseudo_labels(PROBS, 0.95)
    assert target.tolist() == [0, 0, 1, 0, 0, 1]
    assert accepted.tolist() == [True, False, True, True, True, False]
    assert conf[1] == pytest.approx(0.6)
    assert not select_pseudo_labels(PROBS, 1.0)[2].any()


def test_cap_keeps_as_many_per_class_as_the_rarest_class() -> None:
    target, conf, accepted = select_pseudo_labels(PROBS, 0.95)
    keep = cap_per_class(target, conf, accepted, 2)  # class 0: 3 accepted, class 1: 1 → keep 1 each
    assert keep.tolist() == [False, False, True, False, True, False]  # the most confident class-0 sample (0.99)
    three = torch.tensor([[0.99, 0.0, 0.01], [0.01, 0.98, 0.01], [0.97, 0.02, 0.01]])
    t, c, a = select_pseudo_labels(three, 0.95)
    assert not cap_per_class(t, c, a, 3).any()  # class 2 has no accepted sample: the cap is 0


def test_class_weights_balance_the_classes() -> None:
    assert torch.allclose(class_weights(torch.tensor([0.5, 0.5])), torch.ones(2))
    w = class_weights(torch.tensor([0.9, 0.1]), max_weight=10.0)
    assert torch.allclose(w, torch.tensor([1 / 1.8, 5.0]))
    assert torch.allclose(w * torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5]))  # equal total weight per class
    assert float(class_weights(torch.tensor([0.999, 0.001]), max_weight=10.0)[1]) == 10.0


def test_segmentation_targets_weight_the_foreground_up() -> None:
    hook = PseudoLabelHook(_stream(), 2, PseudoLabelConfig(threshold=0.9, freq_momentum=0.0))
    probs = torch.zeros(1, 2, 4, 4)
    probs[:, 0] = 0.99
    probs[0, 0, 0, :2] = 0.02  # two confident foreground pixels
    probs[0, 0, 3, 3] = 0.5  # one unsure pixel
    probs[:, 1] = 1 - probs[:, 0]
    target, weights = hook.targets(probs)
    assert target[0, 0, 0] == 1 and target[0, 1, 1] == 0
    assert weights[0, 3, 3] == 0  # rejected
    fg, bg = float(weights[0, 0, 0]), float(weights[0, 1, 1])
    assert fg > bg > 0
    assert fg * 2 == pytest.approx(bg * 13)  # 2 fg vs 13 bg accepted pixels: equal total weight per class
    with pytest.raises(ValueError):
        PseudoLabelHook(_stream(), 2, PseudoLabelConfig(balance="cap")).targets(probs)


def test_loss_is_averaged_over_all_unlabelled_samples() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, 0.0]])
    target = torch.tensor([0, 1, 0, 1])
    weights = torch.tensor([1.0, 0.0, 0.0, 0.0])
    ce0 = float(torch.nn.functional.cross_entropy(logits[:1], target[:1]))
    assert float(pseudo_label_loss(logits, target, weights)) == pytest.approx(ce0 / 4)
    assert float(pseudo_label_loss(logits, target, torch.zeros(4))) == 0.0


def test_hook_adds_the_weighted_term_and_logs_the_accepted_share() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
    with torch.no_grad():  # a confident constant prediction: every pixel accepted as class 1
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-5.0, 5.0]))
    hook = PseudoLabelHook(_stream(), 2, PseudoLabelConfig(threshold=0.9, weight=2.0, rampup_epochs=0, noise=0.0))
    trainer = _fake_trainer(model)
    hook.on_fit_start(trainer)
    hook.on_epoch_start(trainer, 0)
    out = hook.on_loss(trainer, (), None, torch.tensor(1.0))
    ce = float(torch.nn.functional.cross_entropy(torch.tensor([[-5.0, 5.0]]), torch.tensor([1])))
    assert float(out.detach()) == pytest.approx(1.0 + 2.0 * ce, rel=1e-4)
    logs: dict = {}
    hook.on_epoch_end(trainer, 0, logs)
    assert logs["semi_accepted"] == 1.0 and logs["semi_weight"] == 2.0
    assert model.training  # the model is back in training mode after predicting the targets


def test_class_shares_survive_a_resume() -> None:
    hook = PseudoLabelHook(_stream(), 2, PseudoLabelConfig(threshold=0.5))
    hook.targets(PROBS)
    state = hook.state_tensors()
    assert set(state) == {"class_freq"}  # no teacher with source="model"
    fresh = PseudoLabelHook(_stream(), 2, PseudoLabelConfig(threshold=0.5))
    fresh.load_state_tensors(state)
    fresh.on_fit_start(_fake_trainer(nn.Identity()))
    assert torch.equal(fresh.freq, hook.freq) and not torch.allclose(fresh.freq, torch.tensor([0.5, 0.5], dtype=torch.float64))
    ema = PseudoLabelHook(_stream(), 2, PseudoLabelConfig(source="ema"))
    ema.on_fit_start(_fake_trainer(nn.Conv2d(1, 2, 1)))
    assert {"teacher/weight", "teacher/bias", "class_freq"} <= set(ema.state_tensors())


def test_run_defaults_and_validation() -> None:
    from aemia.runs import RunConfig

    cls = resolve_settings("pseudo-label", "classification", epochs=10)
    seg = resolve_settings("pseudo-label", "segmentation", epochs=10, weight=0.5)
    assert (cls.weight, cls.threshold, cls.rampup_epochs) == (1.0, 0.95, 3.0)
    assert (seg.weight, seg.threshold) == (0.5, 0.9)
    with pytest.raises(ValueError):
        RunConfig(dataset="kvasir", semi="pseudo-label", semi_threshold=1.5)
    with pytest.raises(ValueError, match="co-training"):  # the run vocabulary (aemia.runs.config.SEMI_METHODS)
        RunConfig(dataset="kvasir", semi="co-training")
    with pytest.raises(ValueError):
        PseudoLabelConfig(threshold=0.0)


@pytest.mark.needs_data("brats2015_deepmedic_sample")
def test_3d_data_sets_are_refused(tmp_path: Path) -> None:
    from aemia.recipes.run import train_run
    from aemia.runs import RunConfig

    with pytest.raises(InputError, match="2D"):
        train_run(RunConfig(dataset="brats_wt", semi="mean-teacher", label_fraction=0.5), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_cli_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aemia.cli.main import main

    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out.replace("\n", " ")
    assert "--semi" in text and "--semi-weight" in text and "--semi-threshold" in text
    rc = main(["train", "-d", "kvasir", "--run", str(tmp_path / "x"), "--semi", "co-training"])
    assert rc == 2
    assert "co-training" in capsys.readouterr().err


@pytest.mark.needs_data("pneumoniamnist")
def test_short_real_run_logs_pseudo_label_terms(tmp_path: Path) -> None:
    from aemia.recipes.run import train_run
    from aemia.runs import RunConfig

    cfg = RunConfig(dataset="pneumoniamnist", model="resnet", preset="tiny", label_fraction=0.05, semi="pseudo-label",
                    train=TrainConfig(epochs=1, batch_size=16, progress=False))
    run = tmp_path / "pn_pl"
    metrics = train_run(cfg, run)
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1
    assert {"semi_loss", "semi_weight", "semi_accepted"} <= set(log[0])
    assert 0.0 <= log[0]["semi_accepted"] <= 1.0
    assert metrics["run"]["semi"] == "pseudo-label" and metrics["run"]["semi_threshold"] == 0.95
    assert "semi_threshold: 0.95" in (run / "config.yaml").read_text()
    assert (run / "figures" / "semi.png").exists()
    # a classification run's report embeds the semi figure and metrics.json keeps the settings
    assert "Semi-supervised (pseudo-label)" in (run / "report.html").read_text()
    assert json.loads((run / "metrics.json").read_text())["semi"]["method"] == "pseudo-label"
