"""Model weights as ``.safetensors`` plus a JSON config, written atomically; loading that reports keys.

``save_checkpoint(model, "ckpt/best")`` writes ``best.safetensors`` and ``best.json`` (model config and any
metadata). ``load_checkpoint("ckpt/best")`` rebuilds the model from its config. ``load_weights`` loads into an
existing model, strips DDP's ``module.`` prefix (and a pretraining wrapper's ``backbone.``), reports loaded / missing / unexpected / shape-mismatched keys
and refuses (``CheckpointError``) when nothing matches — it never silently leaves a model untrained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from aemia.errors import CheckpointError
from aemia.utils.io import atomic_path, write_json_atomic


def _stem(path: str | Path) -> Path:
    p = Path(path)
    for suf in (".safetensors", ".json"):
        if p.name.endswith(suf):
            return p.with_name(p.name[: -len(suf)])
    return p


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json``; returns the weights path."""
    stem = _stem(path)
    model = unwrap(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = stem.with_name(stem.name + ".safetensors")
    with atomic_path(weights, suffix=".safetensors") as tmp:
        save_file(state, str(tmp))
    config = {"model": getattr(model, "config", {"class": type(model).__name__}), **(metadata or {})}
    write_json_atomic(stem.with_name(stem.name + ".json"), config)
    return weights


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    weights = _stem(path).with_name(_stem(path).name + ".safetensors")
    if not weights.exists():
        raise CheckpointError(weights, "checkpoint not found")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(weights, f"cannot read checkpoint ({exc})") from None


def read_config(path: str | Path) -> dict[str, Any]:
    cfg = _stem(path).with_name(_stem(path).name + ".json")
    if not cfg.exists():
        raise CheckpointError(cfg, "checkpoint config (.json) not found")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(cfg, f"invalid JSON ({exc.msg} at line {exc.lineno})") from None


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors; missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
                f"shape-mismatched {len(self.mismatched)}")


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load weights into ``model``. ``strict`` refuses any missing key; always refuses when nothing loads."""
    source = read_state(path)
    source = {k[len("module."):] if k.startswith("module.") else k: v for k, v in source.items()}
    target = unwrap(model).state_dict()
    if not any(k in target for k in source) and any(k.startswith("backbone.") for k in source):
        # a multi-task pretraining network (e.g. TransVW's YNet) around the encoder-decoder being fine-tuned
        source = {k[len("backbone."):]: v for k, v in source.items() if k.startswith("backbone.")}
    report = LoadReport()
    matched: dict[str, torch.Tensor] = {}
    for k, v in source.items():
        if k not in target:
            report.unexpected.append(k)
        elif tuple(target[k].shape) != tuple(v.shape):
            report.mismatched.append(f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}")
        else:
            matched[k] = v
    report.missing = [k for k in target if k not in matched]
    report.loaded = sorted(matched)
    weights = _stem(path).with_name(_stem(path).name + ".safetensors")
    if not matched:
        raise CheckpointError(weights, f"no weights match this model ({report.summary()}); refusing to train from scratch")
    if strict and (report.missing or report.mismatched):
        detail = (report.missing + report.mismatched)[:3]
        raise CheckpointError(weights, f"{report.summary()}: e.g. {', '.join(detail)}")
    unwrap(model).load_state_dict(matched, strict=False)
    return report


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from ``<path>.json`` and load ``<path>.safetensors`` strictly."""
    from aemia.nets.registry import model_from_config

    config = read_config(path)
    if "model" not in config or "name" not in config["model"]:
        raise CheckpointError(_stem(path).with_name(_stem(path).name + ".json"), "config has no model description")
    model = model_from_config(config["model"])
    load_weights(model, path, strict=True)
    return model.to(device), config
