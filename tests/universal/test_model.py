"""Universal Model invariants (METHODS.md §4.1, §4.5): 153 head parameters per class, the dynamic head equals an
explicit per-class conv stack, and a new class (new prompt, same controller) leaves the other classes' logits
unchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aemia.universal.model import PARAMS_PER_CLASS, TEXT_DIM, UniversalModel, dynamic_head

TINY = (8, 8, 16)


def _model(classes: list[str], emb: torch.Tensor, dims: int = 2) -> UniversalModel:
    torch.manual_seed(0)
    return UniversalModel(dims, 3, classes, features=TINY, text_embeddings=emb, heads={"a": 3}).eval()


def test_controller_makes_153_parameters_per_class() -> None:
    assert PARAMS_PER_CLASS == 153 == 8 * 8 + 8 * 8 + 8 * 1 + 8 + 8 + 1
    m = _model(["x", "y", "z"], torch.randn(3, TEXT_DIM))
    assert m.controller.out_features == 153 and m.controller.in_features == 512
    assert m.text_proj.in_features == 384 and m.text_proj.out_features == 256
    assert m.head_params(torch.randn(2, 256)).shape == (2, 3, 153)


def test_dynamic_head_equals_explicit_per_class_convs() -> None:
    torch.manual_seed(1)
    feat, params = torch.randn(2, 8, 5, 6), torch.randn(2, 3, 153)
    out = dynamic_head(feat, params)
    for n in range(2):
        for k in range(3):
            p = params[n, k]
            w1, b1 = p[:64].reshape(8, 8, 1, 1), p[64:72]
            w2, b2 = p[72:136].reshape(8, 8, 1, 1), p[136:144]
            w3, b3 = p[144:152].reshape(1, 8, 1, 1), p[152:153]
            h = F.relu(F.conv2d(feat[n:n + 1], w1, b1))
            h = F.relu(F.conv2d(h, w2, b2))
            ref = F.conv2d(h, w3, b3)[0, 0]
            torch.testing.assert_close(out[n, k], ref, rtol=1e-5, atol=1e-5)


def test_adding_a_class_leaves_the_other_classes_logits_unchanged() -> None:
    emb = torch.randn(3, TEXT_DIM)
    two = _model(["x", "y"], emb[:2])
    three = _model(["x", "y", "z"], emb)
    state = {k: v for k, v in two.state_dict().items() if k != "text_embeddings"}
    three.load_state_dict({**state, "text_embeddings": emb})
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        a, b = two(x), three(x)
    assert b.shape == (2, 3, 16, 16)
    torch.testing.assert_close(b[:, :2], a, rtol=0, atol=1e-6)


def test_learned_embedding_and_3d() -> None:
    m = UniversalModel(3, 1, ["liver", "spleen"], features=TINY, embedding="learned")
    assert m.class_embedding.weight.shape == (2, 256)
    seg, feature, heads = m.forward_train(torch.rand(1, 1, 8, 8, 8))
    assert seg.shape == (1, 2, 8, 8, 8) and feature.shape == (1, 256) and heads == ()
