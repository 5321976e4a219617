"""Model registry: ``create_model(name, ...)`` instead of if/else chains.

Every created model carries ``model.config`` (name + constructor arguments), which is what checkpoints
store next to the weights so a model can be rebuilt without code changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}


def register_model(name: str, task: str = "segmentation") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = factory
        _TASKS[name] = task
        return factory

    return deco


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def model_task(name: str) -> str:
    return _TASKS[name]


def create_model(
    name: str,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    features: Sequence[int] | None = None,
    deep_supervision: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered network. ``features=None`` uses the paper's default widths."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    args: dict[str, Any] = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                                deep_supervision=deep_supervision, **kwargs)
    if features is not None:
        args["features"] = tuple(int(f) for f in features)
    model = _REGISTRY[name](**args)
    config = {"name": name, **args}
    if "features" in config:
        config["features"] = list(config["features"])
    model.config = config  # type: ignore[attr-defined]
    return model


def model_from_config(config: dict[str, Any]) -> nn.Module:
    cfg = {k: v for k, v in config.items() if k not in ("name", "pruned_from")}
    return create_model(config["name"], **cfg)


def _register_builtin() -> None:
    from aemia.nets.classifier import ResNetClassifier
    from aemia.nets.unet import UNet
    from aemia.nets.unetpp import UNetPlusPlus

    register_model("unet")(UNet)
    register_model("unetpp")(UNetPlusPlus)
    register_model("resnet", task="classification")(ResNetClassifier)
    from aemia.nets.arl import ArlResNet

    register_model("arl-resnet", task="classification")(ArlResNet)
    from aemia.nets.cam_unet import CamGuidedUNet

    register_model("unet-cam")(CamGuidedUNet)


_register_builtin()
