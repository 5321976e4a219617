"""Network-specific checks (the checks every registered network passes are in ``test_model_contract.py``);
UNet++ satisfies the paper's invariants: exact pruning and equal-weight deep supervision."""

from __future__ import annotations

import pytest
import torch

from aemia.nets import UNetPlusPlus, available_models, create_model
from aemia.train.losses import DeepSupervisionLoss, DiceCELoss


@pytest.mark.parametrize("name", ["unet", "unetpp"])
def test_size_must_divide_by_two_to_the_depth(name: str) -> None:
    model = create_model(name, 2, 2, 3, features=(4, 8, 16)).eval()
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 2, 18, 18))


def test_registry_lists_the_builtin_models() -> None:
    assert {"unet", "unetpp", "resnet"} <= set(available_models())
    with pytest.raises(ValueError, match="unknown model"):
        create_model("nope", 2, 1, 1)


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 16)])
def test_pruned_unetpp_equals_its_head_exactly(dims: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_model("unetpp", dims, 1, 2, features=(4, 8, 16, 32, 64), deep_supervision=True)
    # train a few steps so BatchNorm running statistics are not trivial
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn((2, 1) + (size,) * dims)
        sum(h.mean() for h in model.forward_heads(x)).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    x = torch.randn((2, 1) + (size,) * dims)
    with torch.no_grad():
        heads = model.forward_heads(x)
        assert len(heads) == 4
        sizes = []
        for d in range(1, 5):
            pruned = model.prune(d).eval()
            assert pruned.depth == d
            assert torch.equal(pruned(x), heads[d - 1]), f"L{d} differs from head {d}"
            sizes.append(sum(p.numel() for p in pruned.parameters()))
        assert torch.equal(model(x), heads[-1])
    assert sizes == sorted(sizes) and len(set(sizes)) == 4  # more nodes, more parameters


def test_node_grid_shapes_follow_the_paper() -> None:
    model = UNetPlusPlus(2, 1, 2, features=(4, 8, 16, 32, 64), top_features=6)
    L = model.depth
    assert L == 4
    assert set(model.nodes) == {f"x{i}_{j}" for j in range(L + 1) for i in range(L + 1 - j)}
    # X^{i,j} reads j same-level nodes and one upsampled node
    first_conv = model.nodes["x1_2"][0]
    assert first_conv.in_channels == 2 * 8 + 8
    assert model.nodes["x0_3"][0].in_channels == 4 + 6 + 6 + 6
    feats = model.top_row(torch.randn(1, 1, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 6, 32, 32)] * 4


def test_mean_head_mode_averages_the_heads() -> None:
    model = create_model("unetpp", 2, 1, 2, features=(4, 8, 16), head_mode="mean").eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), torch.stack(model.forward_heads(x)).mean(0))


def test_deep_supervision_loss_is_the_equal_weight_sum_over_all_heads() -> None:
    model = create_model("unetpp", 2, 1, 2, features=(4, 8, 16, 32), deep_supervision=True)
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))
    heads = model.forward_heads(x)
    base = DiceCELoss()
    total = DeepSupervisionLoss(base)(heads, y)
    assert torch.allclose(total, sum(base(h, y) for h in heads))
    # every head receives gradient (the official PyTorch port trained only one head: UNet++ issue #75)
    total.backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.heads)
    assert len(heads) == 3
    weighted = DeepSupervisionLoss(base, [0, 0, 1])(heads, y)
    assert torch.allclose(weighted, base(heads[-1], y))
    with pytest.raises(ValueError, match="2 deep-supervision weights for 3 heads"):
        DeepSupervisionLoss(base, [1, 1])(heads, y)
