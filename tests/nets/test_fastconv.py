"""The oneDNN routing of small batch-1 fp32 convolutions computes torch's convolution (to fp32 rounding)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from aemia.nets import create_model, fastconv

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _plain(model: nn.Module) -> nn.Module:
    """A copy whose convolutions are torch's own classes (the reference path)."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, fastconv.Conv3d):
            m.__class__ = nn.Conv3d
        elif isinstance(m, fastconv.Conv2d):
            m.__class__ = nn.Conv2d
    return ref


@pytest.mark.parametrize("dims,kernel,bias,channels_last", [
    (3, 3, False, False), (3, 3, True, True), (3, 1, True, False), (2, 3, True, False), (2, 5, False, True),
])
def test_routed_conv_matches_torch_in_value_and_gradients(dims: int, kernel: int, bias: bool,
                                                          channels_last: bool) -> None:
    torch.manual_seed(0)
    cls = fastconv.Conv3d if dims == 3 else fastconv.Conv2d
    conv = cls(6, 5, kernel, padding=kernel // 2, bias=bias)
    shape = (1, 6) + (8,) * dims
    x = torch.randn(shape)
    if channels_last:
        fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
        conv = conv.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    assert fastconv._route(conv, x)  # 6*8*8*8 is far below torch's oneDNN threshold
    ref = _plain(conv)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = conv(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    for pa, pb in zip(conv.parameters(), ref.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-4)


def test_only_the_fallback_cases_are_routed() -> None:
    conv = fastconv.Conv3d(4, 4, 3, padding=1)
    small = torch.randn(1, 4, 8, 8, 8)
    assert fastconv._route(conv, small)
    assert not fastconv._route(conv, torch.randn(2, 4, 8, 8, 8))  # batch > 1: torch uses oneDNN itself
    assert not fastconv._route(conv, torch.randn(1, 4, 64, 128, 8))  # above the threshold: oneDNN already
    assert not fastconv._route(conv, small.double())
    assert not fastconv._route(fastconv.Conv3d(4, 4, 3, padding=1, stride=2), small)
    assert not fastconv._route(fastconv.Conv3d(4, 4, 3, padding=0), small)  # not a "same" convolution
    assert not fastconv._route(fastconv.Conv3d(4, 4, 2, padding=0), small)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fastconv._route(conv, small)  # autocast's bf16 conv must see the call


@pytest.mark.parametrize("dims,size", [(3, 16), (2, 32)])
def test_unetpp_with_routed_convs_equals_torch_convs(dims: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_model("unetpp", dims, 1, 2, features=(4, 8, 16, 32), top_features=4).train()
    ref = _plain(model)
    x = torch.randn((1, 1) + (size,) * dims)
    ya, yb = model(x), ref(x)
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-4)
    ya.square().mean().backward()
    yb.square().mean().backward()
    for (name, pa), pb in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-3, atol=1e-4, msg=name)
    sd = model.state_dict()
    assert sd.keys() == ref.state_dict().keys()  # same parameters: checkpoints load either way


def test_unetpp_2d_channels_last_working_layout_keeps_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from aemia.nets import unetpp

    torch.manual_seed(0)
    model = create_model("unetpp", 2, 3, 2, features=(4, 8, 16, 32), top_features=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fast = model(x)
        heads = model.forward_heads(x)
        monkeypatch.setattr(unetpp, "working_layout", lambda t: t)
        ref = model(x)
    assert fast.is_contiguous() and all(h.is_contiguous() for h in heads)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(heads[-1], fast, rtol=0, atol=0)
