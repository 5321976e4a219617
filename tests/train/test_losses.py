"""Dice + CE losses: per-sample vs nnU-Net batch Dice, on hand-computable cases."""

from __future__ import annotations

import torch

from aemia.train.losses import DiceCELoss, get_loss, soft_dice_loss


def _probs_and_target() -> tuple[torch.Tensor, torch.Tensor]:
    # two samples, one foreground class: sample 0 holds 4 foreground voxels (predicted 0.5 each), sample 1 none
    # (predicted 0.25 on 4 voxels)
    probs = torch.zeros(2, 1, 4, 4)
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1
    probs[0, 0, :2, :2] = 0.5
    probs[1, 0, 2:, 2:] = 0.25
    return probs, target


def test_per_sample_dice_scores_an_empty_sample_as_a_total_miss() -> None:
    probs, target = _probs_and_target()
    # sample 0: 2·2 / (2 + 4) = 2/3; sample 1: ~0 (smooth / (1 + smooth))
    expected = 1 - (2 / 3 + 1e-5 / (1 + 1e-5)) / 2
    assert torch.isclose(soft_dice_loss(probs, target), torch.tensor(expected), atol=1e-6)


def test_batch_dice_pools_the_batch_before_the_ratio() -> None:
    probs, target = _probs_and_target()
    # one ratio: 2·2 / (2 + 1 + 4) = 4/7
    assert torch.isclose(soft_dice_loss(probs, target, batch=True), torch.tensor(1 - 4 / 7), atol=1e-6)


def test_batch_dice_gradient_reaches_the_foreground_voxels_of_the_batch() -> None:
    # per-sample Dice gives the empty sample's predictions a gradient ~smooth/Σp² (about 0); batch Dice a real one
    probs, target = _probs_and_target()
    for batch, lo in ((False, 0.0), (True, 1e-3)):
        p = probs.clone().requires_grad_(True)
        soft_dice_loss(p, target, batch=batch).backward()
        g = p.grad[1, 0, 2:, 2:].abs().mean().item()
        assert (g > lo) if batch else (g < 1e-4)


def test_registry_names_the_batch_variant_and_both_agree_on_batch_of_one() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(1, 3, 8, 8, 4), torch.randint(0, 3, (1, 8, 8, 4))
    batched = get_loss("dice_ce_batch")
    assert isinstance(batched, DiceCELoss) and batched.batch_dice
    assert torch.isclose(batched(logits, y), DiceCELoss()(logits, y))
