"""ARL-CNN (Zhang et al., TMI 2019): with α = 0 an ARL block is the plain residual block, its attention maps are
spatial softmaxes (each channel sums to 1), α is a learnable parameter that receives gradients, and the network
has the documented shapes and registry entry."""

from __future__ import annotations

import pytest
import torch

from aemia.nets import ResNetClassifier, create_model, model_from_config
from aemia.nets.arl import ArlBasicBlock, ArlBottleneck, ArlResNet, channel_softmax, spatial_softmax
from aemia.nets.classifier import BasicBlock
from aemia.nets.registry import model_task


def _randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("in_ch,out_ch,stride", [(8, 8, 1), (4, 8, 2)])
def test_basic_arl_block_with_alpha_zero_is_the_plain_residual_block(in_ch: int, out_ch: int, stride: int) -> None:
    torch.manual_seed(0)
    plain = BasicBlock(2, in_ch, out_ch, stride, "batch")
    _randomise_bn(plain)
    arl = ArlBasicBlock(2, in_ch, out_ch, stride, "batch")
    missing, unexpected = arl.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["alpha"] and unexpected == []
    assert float(arl.alpha.detach()) == 0.0  # initialised to 0
    x = torch.randn(2, in_ch, 12, 12)
    plain.eval(), arl.eval()
    torch.testing.assert_close(arl(x), plain(x), rtol=0, atol=0)
    with torch.no_grad():
        arl.alpha.fill_(50.0)
    assert not torch.allclose(arl(x), plain(x))  # the attention term is live once α ≠ 0


@pytest.mark.parametrize("in_ch,out_ch,stride", [(8, 8, 1), (8, 16, 2)])
def test_bottleneck_arl_block_with_alpha_zero_is_the_plain_bottleneck(in_ch: int, out_ch: int, stride: int) -> None:
    torch.manual_seed(0)
    plain = ArlBottleneck(2, in_ch, out_ch, stride, "batch", attention=False)
    _randomise_bn(plain)
    arl = ArlBottleneck(2, in_ch, out_ch, stride, "batch")
    arl.load_state_dict(plain.state_dict(), strict=False)
    plain.eval(), arl.eval()
    x = torch.randn(2, in_ch, 12, 12)
    expected = torch.relu(plain.residual(x) + plain.shortcut(x))  # y = ReLU(F(x) + x)
    torch.testing.assert_close(plain(x), expected)
    torch.testing.assert_close(arl(x), expected, rtol=0, atol=0)
    # with α ≠ 0 the block adds exactly α · A(F(x)) ⊙ x before the ReLU
    with torch.no_grad():
        arl.alpha.fill_(3.0)
        f, s = arl.residual(x), arl.shortcut(x)
        torch.testing.assert_close(arl(x), torch.relu(f + s + 3.0 * spatial_softmax(f) * s))


def test_whole_arl_network_with_alpha_zero_equals_the_resnet_classifier() -> None:
    torch.manual_seed(1)
    kw = dict(features=(4, 8, 16), blocks=(1, 2, 1))
    resnet = ResNetClassifier(2, 3, 2, **kw)
    _randomise_bn(resnet)
    arl = ArlResNet(2, 3, 2, block="basic", **kw)
    missing, unexpected = arl.load_state_dict(resnet.state_dict(), strict=False)
    assert unexpected == [] and all(k.endswith("alpha") for k in missing) and len(missing) == 4
    resnet.eval(), arl.eval()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(arl(x), resnet(x), rtol=0, atol=0)
    torch.testing.assert_close(arl.forward_maps(x), resnet.forward_maps(x), rtol=0, atol=0)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_attention_maps_sum_to_one_over_each_channels_positions(block: str) -> None:
    torch.manual_seed(0)
    unit = (ArlBasicBlock if block == "basic" else ArlBottleneck)(2, 4, 8, 2, "batch").eval()
    a = unit.attention(torch.randn(3, 4, 10, 14))
    assert a.shape == (3, 8, 5, 7)
    assert (a > 0).all()
    torch.testing.assert_close(a.sum(dim=(2, 3)), torch.ones(3, 8))
    # the softmax is over positions, not channels: channel sums are not 1
    assert not torch.allclose(a.sum(dim=1), torch.ones(3, 5, 7))


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_channel_attention_sums_to_one_over_channels_and_enters_the_output_rule(block: str) -> None:
    torch.manual_seed(0)
    cls = ArlBasicBlock if block == "basic" else ArlBottleneck
    unit = cls(2, 4, 8, 1, "batch", attention_axis="channel").eval()
    x = torch.randn(3, 4, 6, 6)
    a = unit.attention(x)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(3, 6, 6))
    torch.testing.assert_close(a, torch.softmax(unit.residual(x), dim=1))  # nn.Softmax2d's axis
    with torch.no_grad():
        unit.alpha.fill_(2.0)
        f, s = unit.residual(x), unit.shortcut(x)
        torch.testing.assert_close(unit(x), torch.relu(f + s + 2.0 * channel_softmax(f) * s))
        spatial = cls(2, 4, 8, 1, "batch").eval()
        spatial.load_state_dict(unit.state_dict())
        assert not torch.allclose(spatial(x), unit(x))  # the axis matters once α ≠ 0


def test_channel_attention_network_with_alpha_zero_equals_the_spatial_one_and_bad_axis_fails() -> None:
    torch.manual_seed(0)
    a = ArlResNet(2, 3, 2, features=(8, 16), blocks=(1, 1), block="basic").eval()
    b = ArlResNet(2, 3, 2, features=(8, 16), blocks=(1, 1), block="basic", attention_axis="channel").eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="attention_axis"):
        ArlResNet(2, 3, 2, features=(8, 16), blocks=(1, 1), attention_axis="pixel")


def test_spatial_softmax_in_3d_and_of_a_constant_map_is_uniform() -> None:
    a = spatial_softmax(torch.randn(2, 3, 4, 5, 6))
    torch.testing.assert_close(a.sum(dim=(2, 3, 4)), torch.ones(2, 3))
    torch.testing.assert_close(spatial_softmax(torch.full((1, 2, 4, 4), 7.0)), torch.full((1, 2, 4, 4), 1 / 16))


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_alpha_is_learnable_and_gets_a_gradient(block: str) -> None:
    torch.manual_seed(0)
    model = ArlResNet(2, 3, 2, features=(8, 16), blocks=(1, 1), block=block).train()
    names = [n for n, _ in model.named_parameters() if n.endswith("alpha")]
    assert len(names) == 2 and model.alphas() == [0.0, 0.0]
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 3, 16, 16)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.endswith("alpha")]
    assert all(g is not None and g.shape == () and float(g.abs()) > 0 for g in grads)
    opt.step()
    assert all(a != 0.0 for a in model.alphas())


def test_without_attention_there_is_no_alpha() -> None:
    model = ArlResNet(2, 3, 2, features=(8, 16), blocks=(1, 1), attention=False)
    assert model.alphas() == [] and not any(n.endswith("alpha") for n, _ in model.named_parameters())


@pytest.mark.parametrize("block,stem,factor",
                         [("basic", "conv3", 4), ("bottleneck", "conv3", 4), ("bottleneck", "conv7", 16)])
def test_output_shapes(block: str, stem: str, factor: int) -> None:
    model = ArlResNet(2, 3, 5, features=(8, 16, 32), blocks=(1, 1, 1), block=block, stem=stem).eval()
    x = torch.rand(2, 3, 64, 48)
    assert model(x).shape == (2, 5)
    assert model.forward_features(x)["embedding"].shape == (2, 32) and model.embedding_dim == 32
    assert model.forward_maps(x).shape == (2, 32, 64 // factor, 48 // factor)
    torch.testing.assert_close(model.forward_maps(x).mean(dim=(2, 3)), model.forward_features(x)["embedding"])


def test_paper_default_is_arl_cnn50() -> None:
    model = ArlResNet(2, 3, 3, stem="conv7")
    assert len(model.arl_blocks()) == 3 + 4 + 6 + 3
    assert all(isinstance(b, ArlBottleneck) for b in model.arl_blocks())
    assert [s[-1].conv3.out_channels for s in model.stages] == [256, 512, 1024, 2048]
    assert model.embedding_dim == 2048
    n = sum(p.numel() for p in model.parameters())
    assert 23.4e6 < n < 23.7e6  # ResNet-50 without its 1000-class head ≈ 23.5 M, + 16 α's + a 3-class head
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3)


def test_registry_entry_and_config_round_trip() -> None:
    assert model_task("arl-resnet") == "classification"
    model = create_model("arl-resnet", 2, 3, 3, features=[8, 16, 32, 64])
    assert model.config["name"] == "arl-resnet"
    clone = model_from_config(model.config)
    assert list(clone.state_dict()) == list(model.state_dict())
    assert len(model.arl_blocks()) == 16  # blocks=None with four stages: the paper's (3, 4, 6, 3)
    five = create_model("arl-resnet", 2, 3, 3, features=[16, 16, 32, 64, 128])  # the CPU preset: 2 per stage
    assert len(five.arl_blocks()) == 10


def test_resnet_classifier_forward_maps_pools_to_its_features() -> None:
    model = ResNetClassifier(2, 3, 2, features=(4, 8), blocks=(1, 1)).eval()
    x = torch.rand(2, 3, 16, 16)
    maps = model.forward_maps(x)
    assert maps.shape == (2, 8, 8, 8)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), model.forward_features(x)["embedding"])
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
        model.forward_maps(torch.rand(1, 1, 16, 16))


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown block"):
        ArlResNet(2, 3, 2, features=(8,), block="dense")
    with pytest.raises(ValueError, match="unknown stem"):
        ArlResNet(2, 3, 2, features=(8,), stem="conv5")
    with pytest.raises(ValueError, match="same length"):
        ArlResNet(2, 3, 2, features=(8, 16), blocks=(1,))
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
        ArlResNet(2, 3, 2, features=(8,), blocks=(1,))(torch.rand(1, 1, 8, 8))
