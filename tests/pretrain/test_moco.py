"""DiRA / CAiD (MoCo-v2 + restoration): loss weights, queue, momentum encoder, shuffle-BN replacement, the
adversary's parameters, and the run folder that ``aemia train --init`` fine-tunes from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aemia.nets import create_model
from aemia.pretrain.dira import AdversarialHook, PatchDiscriminator
from aemia.pretrain.moco import (METHODS, ContrastiveConfig, ContrastiveRestorationLoss, MoCo, MoCoHook,
                                 grouped_embed)
from aemia.pretrain.views import TwoViewDataset, context_distortion, make_views


def _moco(queue: int = 8, momentum: float = 0.9, group: int = 0, seed: int = 0) -> MoCo:
    torch.manual_seed(seed)
    backbone = create_model("unetpp", 2, 3, 1, features=[4, 8, 16])
    return MoCo(backbone, dim=6, queue=queue, momentum=momentum, temperature=0.2, key_bn_group=group)


def test_published_loss_weights() -> None:
    assert METHODS["dira"].weights == {"w_nce": 1.0, "w_rec": 10.0, "w_adv": 0.001}
    assert METHODS["caid"].weights == {"w_nce": 1.0, "w_rec": 10.0, "w_adv": 0.0}
    cfg = ContrastiveConfig.cpu("dira", "kvasir")
    assert (cfg.w_nce, cfg.w_rec, cfg.w_adv) == (1.0, 10.0, 0.001)
    # the loss is exactly 1·NCE + 10·MSE of its own terms
    loss = ContrastiveRestorationLoss(cfg.w_nce, cfg.w_rec)
    rec, logits, target = torch.randn(2, 1, 32, 32), torch.randn(2, 5), torch.rand(2, 1, 32, 32)
    total = loss((rec, logits), target)
    assert float(total) == pytest.approx(loss.last["nce"] + 10 * loss.last["mse"], rel=1e-5)
    # the adversarial term enters with 0.001
    hook = AdversarialHook(weight=0.001, width=4)
    base = torch.tensor(0.0)
    out = hook.on_loss(None, (None, target), (rec, logits), base)  # type: ignore[arg-type]
    assert float(out - base) == pytest.approx(0.001 * hook.sums["adv"][0], rel=1e-5)


def test_queue_is_fifo_with_fixed_size() -> None:
    m = _moco(queue=5)
    for step in range(3):  # batches of 2: entries 0..5 written in order, wrapping after 5
        m.enqueue(torch.full((2, 6), float(step + 1)))
    assert m.queue.shape == (6, 5)
    # batch 3 wrote slots 4 and 0: the oldest entry (batch 1's first) went first
    assert m.queue[0].tolist() == [3.0, 1.0, 2.0, 2.0, 3.0]
    assert int(m.queue_ptr) == 6 % 5


def test_momentum_update_moves_keys_by_one_minus_m_and_no_gradient_reaches_them() -> None:
    m = _moco(momentum=0.9)
    with torch.no_grad():  # make query and key differ
        for q, _ in m.query_pairs():
            q.add_(torch.randn_like(q))
    before = [(q.clone(), k.clone()) for q, k in m.query_pairs()]
    m.momentum_update()
    for (q0, k0), (_, k1) in zip(before, m.query_pairs()):
        torch.testing.assert_close(k1, k0 + 0.1 * (q0 - k0), rtol=1e-5, atol=1e-6)
    x = torch.rand(4, 6, 16, 16)
    rec, logits = m.forward_train(x)
    ContrastiveRestorationLoss()((rec, logits), torch.rand(4, 1, 16, 16)).backward()
    assert all(not k.requires_grad and k.grad is None for _, k in m.query_pairs())
    assert all(q.grad is not None for q, _ in m.query_pairs())


def test_key_bn_with_running_statistics_is_independent_of_batch_order_and_content() -> None:
    m = _moco()  # default: key_bn_group 0, the query encoder's running statistics
    m.train()
    m.backbone(torch.rand(8, 3, 16, 16))  # the query's running statistics move
    m.momentum_update()  # ... and are copied into the key encoder
    q_bufs = [b for i in range(m.depth + 1) for b in m.backbone.nodes[f"x{i}_0"].buffers()]
    k_bufs = [b for blk in m.key_encoder.blocks for b in blk.buffers()]
    assert all(torch.equal(q, k) for q, k in zip(q_bufs, k_bufs))
    x = torch.rand(5, 3, 16, 16)
    keys = grouped_embed(m.key_encoder, x, 0)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(grouped_embed(m.key_encoder, x[perm], 0), keys[perm], rtol=1e-5, atol=1e-6)
    other = x.clone()
    other[1:] = torch.rand(4, 3, 16, 16)  # the rest of the batch changes, sample 0's key does not
    torch.testing.assert_close(grouped_embed(m.key_encoder, other, 0)[0], keys[0], rtol=1e-5, atol=1e-6)
    assert m.key_encoder.training  # the key encoder's mode is left as it was
    # whole-batch BN (what shuffle-BN avoids) does depend on the other samples
    assert not torch.allclose(m.key_encoder.embed(other)[0], m.key_encoder.embed(x)[0], atol=1e-4)
    # ghost BN over groups: the same keys for the same groups, whatever the permutation
    g = torch.Generator().manual_seed(0)
    ghost = grouped_embed(m.key_encoder, x, 2, g)
    assert ghost.shape == keys.shape and torch.isfinite(ghost).all()


@pytest.mark.parametrize(("n", "group", "sizes"), [
    (8, 32, [4, 4]),  # a group never spans a batch of 4 or more: capped at B // 2
    (16, 8, [8, 8]),  # the CPU preset
    (9, 4, [4, 5]),  # a trailing one-sample group would collapse: it joins the previous group
    (10, 4, [4, 4, 2]),
    (3, 2, [3]),  # too small to split without a one-sample group
    (4, 1, [1, 1, 1, 1]),  # G = 1 asked for explicitly stays per-sample
])
def test_key_groups_split_the_batch_without_whole_batch_or_single_sample_groups(n: int, group: int,
                                                                                   sizes: list[int]) -> None:
    m = _moco(group=group)
    seen: list[int] = []
    embed = m.key_encoder.embed

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(int(x.shape[0]))
        return embed(x)

    m.key_encoder.embed = spy  # type: ignore[method-assign]
    x = torch.rand(n, 3, 16, 16)
    keys = grouped_embed(m.key_encoder, x, group, torch.Generator().manual_seed(1))
    assert seen == sizes and keys.shape[0] == n
    # every key is its own image's: the permutation is undone
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(n, generator=g) if group > 1 and sizes != [n] else torch.arange(n)
    first = order[:sizes[0]]
    torch.testing.assert_close(keys[first], embed(x[first]), rtol=1e-5, atol=1e-6)


def test_adversary_trains_only_the_right_parameters() -> None:
    m = _moco()
    hook = AdversarialHook(weight=1.0, width=4)
    x, target = torch.rand(2, 6, 32, 32), torch.rand(2, 1, 32, 32)
    outputs = m.forward_train(x)
    loss = hook.on_loss(None, (x, target), outputs, torch.zeros(()))  # type: ignore[arg-type]
    loss.backward()
    assert all(p.grad is None for p in hook.disc.parameters())  # generator term: no gradient into D
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    gen = {k: v.clone() for k, v in m.state_dict().items()}
    m.zero_grad(set_to_none=True)
    disc = {k: v.clone() for k, v in hook.disc.state_dict().items()}
    hook.on_step_end(None, (x, target), outputs)  # type: ignore[arg-type]
    assert all(p.grad is None for p in m.parameters())  # D step: nothing reaches the generator
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in gen.items())
    assert any(not torch.equal(v, hook.disc.state_dict()[k]) for k, v in disc.items())
    assert tuple(PatchDiscriminator(1, 4)(torch.rand(1, 1, 64, 64)).shape) == (1, 1, 6, 6)


def test_views_are_reproducible_and_the_target_is_the_undistorted_gray_crop() -> None:
    img = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    a, b = make_views(img, np.random.default_rng(5)), make_views(img, np.random.default_rng(5))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    q, k, target = a
    assert q.shape == k.shape == (3, 32, 32) and target.shape == (1, 32, 32)
    kinds = {context_distortion(img, np.random.default_rng(s), 32 / 224)[1] for s in range(60)}
    assert kinds == {"inpaint", "outpaint", "swap", "none"}
    x, y = TwoViewDataset(img[None])[0]
    assert x.shape == (6, 32, 32) and y.shape == (1, 32, 32)


def test_moco_hook_updates_then_enqueues_after_each_step() -> None:
    m = _moco(queue=4)
    loss = ContrastiveRestorationLoss()
    hook = MoCoHook(m, loss)
    outputs = m.forward_train(torch.rand(2, 6, 16, 16))
    loss(outputs, torch.rand(2, 1, 16, 16))
    keys = m.last_keys.clone()
    hook.on_step_end(None, (), outputs)  # type: ignore[arg-type]
    torch.testing.assert_close(m.queue[:, :2], keys.T)
    assert int(m.queue_ptr) == 2 and m.last_keys is None


def _pictures(folder: Path, n: int = 8) -> Path:
    from PIL import Image as PILImage

    folder.mkdir()
    for i in range(n):
        PILImage.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("method", ["dira", "caid"])
def test_cli_pretrains_a_folder_into_a_run_that_init_loads_with_reported_keys(tmp_path: Path, capsys,
                                                                             method: str) -> None:
    """``aemia train --init RUN`` goes through ``recipes.run._init_weights`` (its end-to-end path on Kvasir is
    tested with a Genesis run in test_pretrain_restore.py; the folder layout here is the same)."""
    from aemia.cli.main import main
    from aemia.nets import load_weights
    from aemia.recipes.run import _init_weights

    out = tmp_path / "pre"
    assert main(["pretrain", method, "--data", str(_pictures(tmp_path / "imgs")), "--size", "32", "--preset", "tiny",
                 "--epochs", "1", "--batch-size", "4", "--queue", "8", "--amp", "none", "--out", str(out)]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert "train_nce" in log[0] and np.isfinite(log[0]["val_mse"])
    assert ("train_adv" in log[0] and "train_disc" in log[0]) == (method == "dira")
    report = load_weights(create_model("unetpp", 2, 3, 2, features=[8, 16, 32, 64]), out / "checkpoints" / "best",
                          strict=False)
    assert any(k.startswith("nodes.x0_0") for k in report.loaded)  # the encoder-decoder, "backbone." stripped
    assert not any("key_encoder" in k or "queue" in k for k in report.loaded + report.unexpected)
    assert {m.split(" ")[0] for m in report.mismatched} == {f"heads.{i}.weight" for i in range(3)} | {
        f"heads.{i}.bias" for i in range(3)}  # 1-channel restoration heads vs 2 classes: reported, not loaded
    capsys.readouterr()
    _init_weights(create_model("unetpp", 2, 3, 2, features=[8, 16, 32, 64]), str(out))
    printed = capsys.readouterr().out
    assert f"init from {out / 'checkpoints' / 'best'}" in printed and "loaded:" in printed and "nodes" in printed
    assert "skipped (shape differs" in printed
    assert main(["pretrain", method, "--data", str(tmp_path / "imgs"), "--size", "40", "--out", str(tmp_path / "b")]) == 2


def _identification_nce(group: int, steps: int = 60) -> float:
    """Pure MoCo (no restoration, m = 0) on identical query and key images of 64 smooth random pictures: the
    NCE after ``steps`` Adam steps. With a working key branch it falls well below chance, ln(1 + K)."""
    torch.manual_seed(0)
    images = torch.nn.functional.avg_pool2d(torch.rand(64, 3, 64, 64), 4, 2, 1)
    m = MoCo(create_model("unetpp", 2, 3, 1, features=[4, 8, 16]), dim=16, queue=32, momentum=0.0,
             temperature=0.2, key_bn_group=group)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    loss = ContrastiveRestorationLoss(1.0, 0.0)
    order = torch.Generator().manual_seed(0)
    m.train()
    for _ in range(steps):
        x = images[torch.randperm(64, generator=order)[:16]]
        value = loss(m.forward_train(torch.cat([x, x], 1)), torch.zeros(16, 1, 32, 32))
        opt.zero_grad()
        value.backward()
        opt.step()
        m.momentum_update()
        m.enqueue(m.last_keys)
    return loss.last["nce"]


def test_default_key_bn_learns_instance_discrimination_and_running_statistics_stay_at_chance() -> None:
    """The cause of the 'MoCo collapse' of the first CPU runs: keys normalised with running statistics (eval
    mode) are another function than their batch-normalised queries, so even identical views are not identified
    (NCE stays at ln(1 + K)); ghost BN over shuffled key groups, the default, learns."""
    chance = float(np.log(1 + 32))
    assert MoCo(create_model("unetpp", 2, 3, 1, features=[4, 8, 16])).key_bn_group == 32  # paper per-GPU batch
    assert ContrastiveConfig.cpu("caid", "kvasir").key_bn_group == 8
    assert _identification_nce(8) < 0.75 * chance
    assert _identification_nce(0) > 0.9 * chance


def test_identification_accuracy_counts_ties_as_misses() -> None:
    """A collapsed embedding gives equal logits; argmax would call every positive identified."""
    loss = ContrastiveRestorationLoss(1.0, 0.0)
    loss((torch.zeros(2, 1, 4, 4), torch.tensor([[5.0, 5.0, 5.0], [6.0, 5.0, 1.0]])), torch.zeros(2, 1, 4, 4))
    assert loss.last["id_acc"] == 0.5
