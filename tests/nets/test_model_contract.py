"""One contract for every registered network (in the style of segmentation_models_pytorch's shared model test):
the test class is parametrised over ``available_models()``, so a newly registered model is checked without
writing a test for it. Checked: 2D and 3D where the model supports them, output shapes, the ``forward_features``
contract (``enc0..encN``, ``bottleneck``, ``embedding``, optional ``dec<i>``), deep supervision (``forward`` is
the deepest of ``forward_heads``), UNet++ pruning (``prune(d)`` equals head d), the checkpoint round trip
(safetensors + JSON; missing / unexpected keys reported) and determinism under a fixed seed.

Widths are tiny (a few channels, 32 px in 2D and 16 px in 3D) to keep the whole class fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from aemia.errors import CheckpointError
from aemia.nets import available_models, create_model, load_checkpoint, load_weights, save_checkpoint
from aemia.nets.registry import model_task

#: Tiny constructor arguments per model; a model not listed gets DEFAULT_TINY.
DEFAULT_TINY: dict[str, Any] = {"features": (4, 8, 16)}
TINY: dict[str, dict[str, Any]] = {
    "resnet": {"features": (4, 8), "blocks": (1, 1)},
    "arl-resnet": {"features": (4, 8), "blocks": (1, 1), "block": "basic"},
}
SIZE = {2: 32, 3: 16}
IN_CH, OUT_CH, BATCH = 2, 3, 2


def build(name: str, dims: int, seed: int = 0, **extra: Any) -> nn.Module:
    """The tiny model in eval mode; skips the test when the model does not support ``dims``."""
    torch.manual_seed(seed)
    try:
        model = create_model(name, dims, IN_CH, OUT_CH, **{**TINY.get(name, DEFAULT_TINY), **extra})
    except ValueError as exc:
        if dims == 3 and "2D" in str(exc):
            pytest.skip(f"{name} is 2D only ({exc})")
        raise
    return model.eval()


def example(model: nn.Module, dims: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((BATCH, int(model.in_channels)) + (SIZE[dims],) * dims, generator=g)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", available_models())
class TestModelContract:
    def test_output_shape(self, name: str, dims: int) -> None:
        model = build(name, dims)
        with torch.no_grad():
            out = model(example(model, dims))
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        if model_task(name) == "classification":
            assert tuple(out.shape) == (BATCH, OUT_CH)
        else:
            assert tuple(out.shape) == (BATCH, OUT_CH) + (SIZE[dims],) * dims
        assert torch.isfinite(out).all()

    def test_wrong_channel_count_is_a_clear_error(self, name: str, dims: int) -> None:
        model = build(name, dims)
        x = torch.randn((1, int(model.in_channels) + 1) + (SIZE[dims],) * dims)
        with pytest.raises(ValueError, match="channels"):
            model(x)

    def test_gradients_reach_every_parameter(self, name: str, dims: int) -> None:
        model = build(name, dims).train()
        x = example(model, dims)
        outs = model.forward_heads(x) if hasattr(model, "forward_heads") else [model(x)]
        sum(o.square().mean() for o in outs).backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == []

    def test_forward_features_follow_the_contract(self, name: str, dims: int) -> None:
        model = build(name, dims)
        x = example(model, dims)
        with torch.no_grad():
            feats = model.forward_features(x)
            out = model(x)
        assert isinstance(feats, dict) and all(isinstance(v, torch.Tensor) for v in feats.values())
        keys = list(feats)
        enc = [k for k in keys if k.startswith("enc")]
        assert enc == [f"enc{i}" for i in range(len(enc))] and len(enc) >= 2, keys
        assert keys[: len(enc)] == enc  # encoder levels first, shallow to deep
        allowed = set(enc) | {"bottleneck", "embedding"}
        assert all(k in allowed or re.fullmatch(r"dec\d+", k) for k in keys), keys
        sizes = [feats[k].shape[2:] for k in enc]
        for k in enc:
            assert feats[k].ndim == dims + 2 and feats[k].shape[0] == BATCH
        for a, b in zip(sizes, sizes[1:]):
            assert all(sb <= sa for sa, sb in zip(a, b)), f"encoder grows: {sizes}"
        assert torch.equal(feats["bottleneck"], feats[enc[-1]])
        emb = feats["embedding"]
        assert emb.shape == (BATCH, feats["bottleneck"].shape[1])
        torch.testing.assert_close(emb, feats["bottleneck"].mean(dim=tuple(range(2, dims + 2))))
        for k in keys:
            if k.startswith("dec"):
                level = int(k[3:])
                assert feats[k].shape[2:] == feats[f"enc{level}"].shape[2:], k
        if model_task(name) == "classification":  # the embedding is what the final linear layer reads
            linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            torch.testing.assert_close(linear(emb), out, rtol=0, atol=0)

    def test_forward_is_the_deepest_head(self, name: str, dims: int) -> None:
        model = build(name, dims, deep_supervision=True)
        if not hasattr(model, "forward_heads"):
            pytest.skip(f"{name} has no deep supervision")
        x = example(model, dims)
        with torch.no_grad():
            heads = model.forward_heads(x)
            out = model(x)
        assert len(heads) >= 1 and all(h.shape == out.shape for h in heads)
        torch.testing.assert_close(out, heads[-1], rtol=0, atol=0)

    def test_pruning_equals_each_head(self, name: str, dims: int) -> None:
        model = build(name, dims, deep_supervision=True)
        if not hasattr(model, "prune"):
            pytest.skip(f"{name} cannot be pruned")
        x = example(model, dims)
        with torch.no_grad():
            heads = model.forward_heads(x)
            for d in range(1, len(heads) + 1):
                torch.testing.assert_close(model.prune(d).eval()(x), heads[d - 1], rtol=0, atol=0)

    def test_checkpoint_round_trip(self, name: str, dims: int, tmp_path: Path) -> None:
        model = build(name, dims)
        x = example(model, dims)
        save_checkpoint(model, tmp_path / "m", {"note": "contract"})
        clone, meta = load_checkpoint(tmp_path / "m")
        assert meta["model"] == json.loads(json.dumps(model.config)) and meta["note"] == "contract"
        assert type(clone) is type(model)
        with torch.no_grad():
            torch.testing.assert_close(clone.eval()(x), model(x), rtol=0, atol=0)

    def test_loading_reports_missing_and_unexpected_keys(self, name: str, dims: int, tmp_path: Path) -> None:
        model = build(name, dims)
        save_checkpoint(model, tmp_path / "m")
        state = load_file(str(tmp_path / "m.safetensors"))
        dropped = sorted(state)[0]
        del state[dropped]
        state["not_a_layer.weight"] = torch.zeros(1)
        save_file(state, str(tmp_path / "m.safetensors"))
        report = load_weights(build(name, dims, seed=5), tmp_path / "m", strict=False)
        assert report.missing == [dropped] and report.unexpected == ["not_a_layer.weight"]
        assert len(report.loaded) == len(state) - 1 and not report.mismatched
        with pytest.raises(CheckpointError, match="missing 1"):
            load_weights(build(name, dims), tmp_path / "m", strict=True)

    def test_fixed_seed_is_deterministic(self, name: str, dims: int) -> None:
        a, b = build(name, dims, seed=3), build(name, dims, seed=3)
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
        x = example(a, dims)
        with torch.no_grad():
            first = a(x)
            torch.testing.assert_close(a(x), first, rtol=0, atol=0)
            torch.testing.assert_close(b(x), first, rtol=0, atol=0)
        other = build(name, dims, seed=4).state_dict()
        assert any(not torch.equal(sa[k], other[k]) for k in sa if sa[k].is_floating_point())


def test_every_registered_model_is_covered() -> None:
    """The builtin networks are registered (and so run through the contract above)."""
    assert {"unet", "unetpp", "resnet", "arl-resnet", "unet-cam"} <= set(available_models())


def test_nets_never_imports_a_higher_layer() -> None:
    """``aemia.nets`` imports only from itself and the layers below it (no lazy import of a recipe either)."""
    import ast

    import aemia.nets

    allowed = ("aemia.nets", "aemia.errors", "aemia.utils", "aemia.data", "aemia.evaluate")
    for path in Path(aemia.nets.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for mod in names:
                if mod.startswith("aemia"):
                    assert mod.startswith(allowed), f"{path.name} imports {mod}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("aemia."):
                assert node.value.startswith(allowed), f"{path.name} names module {node.value}"
