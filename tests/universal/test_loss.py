"""Partial-label loss (METHODS.md §4.2): only the classes a data set annotates are supervised."""

from __future__ import annotations

import torch

from aemia.universal.loss import UniversalLoss, partial_label_loss, per_class_losses
from aemia.universal.model import TEXT_DIM, UniversalModel


def test_gradient_into_an_unannotated_class_is_exactly_zero() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    masks = (torch.rand(2, 3, 8, 8) > 0.5).float()
    annotated = torch.tensor([[True, False, True], [True, False, False]])
    partial_label_loss(logits, masks, annotated).backward()
    g = logits.grad
    assert torch.equal(g[:, 1], torch.zeros_like(g[:, 1]))  # class 1 is annotated by no sample
    assert torch.equal(g[1, 2], torch.zeros_like(g[1, 2]))  # class 2 only by sample 0
    assert g[0, 0].abs().sum() > 0 and g[0, 2].abs().sum() > 0 and g[1, 0].abs().sum() > 0


def test_unannotated_class_prompt_gets_no_gradient_through_the_model() -> None:
    torch.manual_seed(0)
    emb = torch.randn(2, TEXT_DIM)
    m = UniversalModel(2, 3, ["x", "y"], features=(8, 8, 16), text_embeddings=emb, embedding="learned")
    seg, _, _ = m.forward_train(torch.rand(2, 3, 16, 16))
    y = (torch.zeros(2, 2, 16, 16), torch.tensor([[True, False], [True, False]]), torch.zeros(2, dtype=torch.long),
         torch.full((2,), -1))
    UniversalLoss([-1])((seg, None, ()), y).backward()
    grad = m.class_embedding.weight.grad
    assert torch.equal(grad[1], torch.zeros(256)) and grad[0].abs().sum() > 0


def test_per_class_loss_known_values() -> None:
    big = torch.full((1, 2, 4, 4), 30.0)  # sigmoid = 1 everywhere
    masks = torch.stack([torch.ones(4, 4), torch.zeros(4, 4)])[None]
    loss = per_class_losses(big, masks)
    assert abs(float(loss[0, 0])) < 1e-6  # perfect: BCE 0, Dice 1
    assert abs(float(loss[0, 1]) - (30.0 + 1 - 1 / 17)) < 1e-3  # BCE 30, Dice (0+1)/(16+0+1)


def test_classification_head_of_the_batchs_data_set() -> None:
    heads = (torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 2, requires_grad=True))
    y = (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, dtype=torch.bool), torch.tensor([1, 1]), torch.tensor([0, 1]))
    loss = UniversalLoss([-1, 1])((torch.zeros(2, 1, 4, 4, requires_grad=True), None, heads), y)
    loss.backward()
    assert abs(float(loss.detach()) - float(torch.log(torch.tensor(2.0)))) < 1e-6
    assert heads[0].grad is None or torch.equal(heads[0].grad, torch.zeros(2, 3))


def test_classification_only_model_has_no_segmentation_classes() -> None:
    from aemia.universal.prompts import prompt_embeddings

    emb = prompt_embeddings([], None, encoder=lambda p: (_ for _ in ()).throw(AssertionError("not called")))
    m = UniversalModel(2, 3, [], features=(8, 8, 16), text_embeddings=emb, heads={"busi": 3})
    out = m.forward_train(torch.rand(2, 3, 16, 16))
    y = (torch.zeros(2, 0, 16, 16), torch.zeros(2, 0, dtype=torch.bool), torch.zeros(2, dtype=torch.long),
         torch.tensor([0, 2]))
    loss = UniversalLoss([0])(out, y)
    loss.backward()
    assert out[0].shape == (2, 0, 16, 16) and m.heads["busi"].weight.grad.abs().sum() > 0
