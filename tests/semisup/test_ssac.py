"""SSAC (adversarial-autoencoder semi-supervised classifier): shapes, adversarial loss signs, the transition layer
as the only path from R to C, reconstruction on real PneumoniaMNIST, and a tiny end-to-end run + CLI errors."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from aemia.cli.main import main
from aemia.errors import InputError
from aemia.semisup import ssac as S
from aemia.train.hooks import Hook

needs_pneumonia = pytest.mark.needs_data("pneumoniamnist")


@pytest.mark.parametrize("size,channels,widths", [(28, 1, (8, 16, 32)), (64, 3, (8, 16, 32, 64))])
def test_shapes_of_every_network(size: int, channels: int, widths: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    aae = S.AAE(channels, size, widths, latent_dim=6)
    x = torch.rand(3, channels, size, size)
    z, logits = aae(x)
    assert z.shape == (3, 6) and logits.shape == x.shape
    feats = aae.encoder.features(x)
    assert [f.shape[-1] for f in feats] == S.level_sizes(size, len(widths))
    assert [f.shape[1] for f in feats] == list(widths)
    assert aae.discriminator(z).shape == (3,)
    clf = S.FusionClassifier(channels, 3, [2 * w for w in widths], r_widths=widths)
    assert clf(x, feats).shape == (3, 3)
    assert S.SSACNet(aae.encoder, clf)(x).shape == (3, 3)
    assert S.level_sizes(28, 3) == [28, 14, 7] and S.level_sizes(64, 4) == [64, 32, 16, 8]


def test_adversarial_losses_have_the_right_sign() -> None:
    big = torch.full((8,), 10.0)
    assert S.discriminator_loss(big, -big) < 1e-3 < 10 < S.discriminator_loss(-big, big)  # separates = low loss
    assert S.generator_loss(big) < 1e-3 < 10 < S.generator_loss(-big)  # fooled discriminator = low loss
    zero = torch.zeros(8)
    assert S.discriminator_loss(zero, zero).item() == pytest.approx(2 * np.log(2), rel=1e-6)


def test_generator_step_lowers_the_discriminators_ability_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    aae = S.AAE(1, 28, (8, 16, 32), latent_dim=4)
    aae.eval()  # batch-norm in eval mode: the same batch gives the same codes
    x = torch.rand(32, 1, 28, 28)
    zp = torch.randn(32, 4)
    with torch.no_grad():
        aae.encoder.fc.bias.add_(3.0)  # codes start far from the prior
    opt_d = torch.optim.Adam(aae.discriminator.parameters(), lr=1e-2)
    for _ in range(30):  # a discriminator that tells codes from prior samples
        loss = S.discriminator_loss(aae.discriminator(zp), aae.discriminator(aae.encoder(x).detach()))
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()

    def d_state() -> tuple[float, float]:
        with torch.no_grad():
            dc = aae.discriminator(aae.encoder(x))
            return S.discriminator_loss(aae.discriminator(zp), dc).item(), S.generator_loss(dc).item()

    d_before, g_before = d_state()
    assert d_before < 0.5  # it does separate them
    opt_g = torch.optim.Adam(aae.encoder.parameters(), lr=1e-2)
    for _ in range(5):
        g = S.generator_loss(aae.discriminator(aae.encoder(x)))
        opt_g.zero_grad()
        g.backward()
        opt_g.step()
    d_after, g_after = d_state()
    assert g_after < g_before and d_after > d_before  # the encoder fooled the (fixed) discriminator


def test_zero_transition_makes_ssac_equal_to_c_alone() -> None:
    widths, r_widths = (8, 16, 32), (4, 8, 16)
    torch.manual_seed(1)
    fused = S.FusionClassifier(1, 2, widths, r_widths=r_widths)
    torch.manual_seed(1)
    alone = S.FusionClassifier(1, 2, widths)
    for k, v in alone.state_dict().items():  # same seed, transitions built last: C's weights are identical
        assert torch.equal(v, fused.state_dict()[k]), k
    fused.eval()
    alone.eval()
    x = torch.rand(4, 1, 28, 28)
    enc = S.Encoder(1, 28, r_widths, 8).eval()
    out = fused(x, enc.features(x))
    torch.manual_seed(5)
    enc2 = S.Encoder(1, 28, r_widths, 8).eval()  # other R features
    assert torch.allclose(out, fused(x, enc2.features(x)), atol=0)
    assert torch.allclose(out, alone(x), atol=1e-6)
    # ... and the transitions are learnable: a nonzero gradient reaches them
    fused.train()
    fused(x, [f.detach() for f in enc.features(x)]).logsumexp(1).sum().backward()
    assert all(t.weight.grad.abs().sum() > 0 for t in fused.transitions.values())
    with pytest.raises(ValueError, match="r_features"):
        fused(x)


def test_frozen_encoder_gets_no_update_and_keeps_its_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    enc = S.Encoder(1, 28, (4, 8, 16), 8)
    clf = S.FusionClassifier(1, 2, (8, 16, 32), r_widths=(4, 8, 16))
    net = S.SSACNet(enc, clf, freeze_encoder=True).train()
    assert not enc.training and clf.training
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(net(torch.rand(6, 1, 28, 28)), torch.tensor([0, 1] * 3))
    loss.backward()
    opt.step()
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in enc.parameters())


def test_paired_auc_difference_of_a_model_with_itself_is_zero() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    d = S.paired_auc_difference(y, p, p, n_boot=50)
    assert d["mean"] == 0 and d["ci"] == [0.0, 0.0]
    m = S.classification_metrics(y, p, n_boot=50)
    assert m["auc"]["ci"][0] <= m["auc"]["mean"] <= m["auc"]["ci"][1]


@needs_pneumonia
def test_reconstruction_loss_falls_on_real_pneumoniamnist() -> None:
    from aemia.data.catalog import get_dataset

    x = torch.from_numpy(np.ascontiguousarray(get_dataset("pneumoniamnist").arrays("train")[0][:64]))
    torch.manual_seed(0)
    aae = S.AAE(1, 28, (8, 16, 32), latent_dim=16)
    opt = torch.optim.Adam(list(aae.encoder.parameters()) + list(aae.decoder.parameters()), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = S.reconstruction_loss(aae(x)[1], x, "bce")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.02
    with torch.no_grad():
        assert S.reconstruction_loss(aae(x)[1], x, "mse") < 0.05


class _Killed(Exception):
    pass


class _KillAt(Hook):
    """Stands for a kill: raises at the start of ``epoch`` (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch: int) -> None:  # noqa: ANN001
        if epoch == self.epoch:
            raise _Killed


def _tiny_data(n: int = 24, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, size, size), dtype=np.float32)
    t = (np.arange(n) % 2).astype(np.int64)
    x[t == 1, :, 4:12, 4:12] += 0.5  # a learnable class difference
    return np.clip(x, 0, 1), t


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_phase_1_killed_and_resumed_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    x, _ = _tiny_data()
    cfg = S.SSACConfig(size=16, widths=[8, 16], aae_widths=[4, 8], epochs_aae=2, batch_aae=8, progress=False,
                       amp="none")
    full = S.build_models(cfg, 1, 2)[0]
    h_full = S.train_aae(full, x, cfg, tmp_path / "full")
    killed = S.build_models(cfg, 1, 2)[0]
    with pytest.raises(_Killed):
        S.train_aae(killed, x, cfg, tmp_path / "killed", hooks=[_KillAt(1)])
    resumed = S.build_models(cfg, 1, 2)[0]  # a fresh process: weights, optimisers and prior sampler from disk
    h_resumed = S.train_aae(resumed, x, cfg, tmp_path / "killed", resume=True)
    assert _same_weights(full, resumed) and not _same_weights(full, killed)
    assert h_full == h_resumed and [h["epoch"] for h in h_full] == [1, 2]
    assert set(h_full[0]) == {"epoch", "recon", "d_loss", "g_loss", "d_acc"} and 0 <= h_full[0]["d_acc"] <= 1


def test_phase_2_killed_and_resumed_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    x, t = _tiny_data()
    cfg = S.SSACConfig(size=16, widths=[8, 16], aae_widths=[4, 8], epochs_cls=2, batch_cls=8, encoder="finetune",
                       progress=False, amp="none")

    def fresh() -> S.SSACNet:
        aae, fused, _ = S.build_models(cfg, 1, 2)
        return S.SSACNet(aae.encoder, fused, freeze_encoder=False)

    full = fresh()
    h_full = S.train_classifier(full, x, t, cfg, tmp_path / "full", val=(x, t))
    with pytest.raises(_Killed):
        S.train_classifier(fresh(), x, t, cfg, tmp_path / "killed", val=(x, t), hooks=[_KillAt(1)])
    resumed = fresh()
    h_resumed = S.train_classifier(resumed, x, t, cfg, tmp_path / "killed", val=(x, t), resume=True)
    assert _same_weights(full, resumed)
    assert h_full == h_resumed and [h["epoch"] for h in h_full] == [1, 2] and "val_auc" in h_full[-1]
    assert not _same_weights(full.encoder, S.build_models(cfg, 1, 2)[0].encoder)  # fine-tuned


def test_the_fine_tuned_encoder_steps_at_the_scaled_rate(tmp_path: Path) -> None:
    """Phase 2's first step (Adam) moves a weight by at most its rate, ~the rate where it has a gradient: lr_cls for
    the classifier, lr_cls × scale for the encoder."""
    x, t = _tiny_data(8)
    cfg = S.SSACConfig(size=16, widths=[8, 16], aae_widths=[4, 8], epochs_cls=1, batch_cls=8, encoder="finetune",
                       encoder_lr_scale=0.1, augment=False, progress=False, amp="none")
    aae, fused, _ = S.build_models(cfg, 1, 2)
    net = S.SSACNet(aae.encoder, fused, freeze_encoder=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rates: list[list[float]] = []
    after: dict[str, torch.Tensor] = {}

    class Rates(Hook):  # the raw weights right after the step (the model returned is their average)
        def on_step_end(self, trainer, batch, outputs) -> None:  # noqa: ANN001
            rates.append([g["lr"] for g in trainer.optimizer.param_groups])
            after.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    S.train_classifier(net, x, t, cfg, tmp_path, hooks=[Rates()])
    assert rates == [[cfg.lr_cls, cfg.lr_cls * 0.1]]  # one step, at the cosine schedule's first (full) rate

    def largest_move(prefix: str) -> float:
        moves = [(after[k] - before[k]).abs().max() for k in before
                 if k.startswith(prefix) and k.endswith("weight") and before[k].is_floating_point()]
        return float(max(moves))

    assert largest_move("classifier.") == pytest.approx(cfg.lr_cls, rel=1e-3)
    assert largest_move("encoder.") == pytest.approx(cfg.lr_cls * 0.1, rel=1e-3)


@needs_pneumonia
def test_tiny_end_to_end_run_and_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = S.SSACConfig(dataset="pneumoniamnist", label_fraction=0.02, epochs_aae=1, epochs_cls=1, max_unlabelled=100,
                       n_boot=50, progress=False)
    run = tmp_path / "ssac"
    m = S.run_ssac(cfg, run)
    for name in ("metrics.json", "config.yaml", "splits.json", "aae/log.jsonl", "ssac/checkpoints/last.safetensors", "figures/ssac.png", "checkpoints/aae.safetensors",
                 "checkpoints/ssac.safetensors", "checkpoints/ssac.json", "checkpoints/classifier.safetensors"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["n_labelled"] == 95 and saved["n_unlabelled"] == 100 and saved["n_test"] == 624
    for model in ("ssac", "classifier"):
        auc = saved[model]["auc"]
        assert 0 <= auc["ci"][0] <= auc["mean"] <= auc["ci"][1] <= 1
    assert "SSAC AUC" in m["headline"] and len(saved["history"]["aae"]) == 1
    splits = json.loads((run / "splits.json").read_text())
    assert not set(splits["labelled"]) & set(splits["unlabelled_used"])
    # checkpoints rebuild the models that were evaluated
    from aemia.data.catalog import get_dataset

    aae, ssac_net, alone = S.load_ssac(run)
    tx, _, ty = get_dataset("pneumoniamnist").arrays("test")
    probs = S.predict_proba(ssac_net, np.ascontiguousarray(tx))
    assert S.classification_metrics(ty, probs, n_boot=10)["auc"]["mean"] == pytest.approx(saved["ssac"]["auc"]["mean"])
    with pytest.raises(InputError, match="already exists"):
        S.run_ssac(cfg, run)
    # resuming a finished run reads config.yaml and reuses every phase: the same metrics
    again = S.run_ssac(None, run, resume=True)
    assert again["ssac"] == saved["ssac"] and again["history"] == saved["history"]
    # the CLI: existing run folder, and a data set without classes → one error line, exit 2
    assert main(["semi", "ssac", "--dataset", "pneumoniamnist", "--run", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["semi", "ssac", "--dataset", "kvasir", "--run", str(tmp_path / "kv")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "no image-level classes" in err[0]
    assert not (tmp_path / "kv").exists()


@needs_pneumonia
def test_a_pretrained_aae_is_reused_only_when_it_matches(tmp_path: Path) -> None:
    from aemia.nets.checkpoint import read_state, save_checkpoint

    base = dict(dataset="pneumoniamnist", label_fraction=0.02, epochs_aae=0, epochs_cls=1, n_boot=20, progress=False)
    cfg = S.SSACConfig(**base)
    torch.manual_seed(3)
    aae = S.AAE(1, 28, cfg.level_widths()[1], cfg.latent_dim)
    save_checkpoint(aae, tmp_path / "phase1", {"ssac": {"dataset": "pneumoniamnist", "max_unlabelled": None},
                                               "history": [{"epoch": 1, "recon": 0.5}]})
    m = S.run_ssac(S.SSACConfig(**base, pretrained_aae=str(tmp_path / "phase1")), tmp_path / "a")
    assert m["history"]["aae"] == [{"epoch": 1, "recon": 0.5}]
    reused = read_state(tmp_path / "a" / "checkpoints" / "aae")
    assert all(torch.equal(v, reused[k]) for k, v in aae.state_dict().items())
    with pytest.raises(InputError, match="whole training split"):  # phase 1 saw only part of the images
        S.run_ssac(S.SSACConfig(**base, max_unlabelled=50, pretrained_aae=str(tmp_path / "phase1")), tmp_path / "b")
    with pytest.raises(InputError, match="differs"):
        S.run_ssac(S.SSACConfig(**base, latent_dim=8, pretrained_aae=str(tmp_path / "a")), tmp_path / "c")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_run_config_is_yaml_and_old_json_runs_still_read(tmp_path: Path) -> None:
    from aemia.runs.folder import RunFolder

    cfg = S.SSACConfig(dataset="busi", widths=[8, 16], seed=3)
    RunFolder(tmp_path / "new").save_config(asdict(cfg))
    assert S.load_ssac_config(tmp_path / "new") == cfg
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({"dataset": "busi", "seed": 3}))
    assert S.load_ssac_config(tmp_path / "old") == S.SSACConfig(dataset="busi", seed=3)
    assert RunFolder(tmp_path / "old").config_dict()["seed"] == 3
    with pytest.raises(InputError, match="config.yaml missing"):
        RunFolder(tmp_path / "none").config_dict()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("dataset: busi\nnot_a_field: 1\n")
    with pytest.raises(InputError, match="not an SSAC run config"):
        S.load_ssac_config(tmp_path / "bad")
