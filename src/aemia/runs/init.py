"""``--init``: start a network from pretrained weights: a run folder, a checkpoint, or a shipped model's name.

One code path for ``aemia train``, ``aemia active init`` and ``aemia semi ...``: :func:`resolve_init` turns the
option into a checkpoint stem (``<run>/checkpoints/best``, ``<shipped>/model`` …), :func:`init_weights` loads by
name and shape through :func:`aemia.nets.load_weights` and prints what loaded, what was skipped and why. Nothing
matching is a :class:`CheckpointError` (never a silent start from scratch); so is a shipped start of which less
than half of the network's tensors load (say, another ``--model`` or width preset), with the fitting options.

``universal`` is the shipped 2D universal model (``universal2d``, :mod:`aemia.universal`); its backbone (encoder
and decoder) is what a U-Net takes from it, while its class-prompt heads stay behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from aemia.errors import CheckpointError, InputError
from aemia.nets.checkpoint import LoadReport, load_weights
from aemia.runs.shipped import shipped_model_dir

#: Short names of shipped models.
ALIASES = {"universal": "universal2d"}


def resolve_init(init: str | Path) -> Path:
    """The checkpoint stem ``init`` names: a run folder, a shipped model folder, a checkpoint file or stem, or a
    shipped model's name (``universal``, ``universal2d-no-kvasir``); InputError when it is none of them."""
    path = Path(init).expanduser()
    if path.is_dir():
        if (path / "model.safetensors").is_file() and not (path / "checkpoints" / "best.safetensors").is_file():
            return path / "model"
        return path / "checkpoints" / "best"
    if path.is_file() or path.with_name(path.name + ".safetensors").is_file():
        return path.with_name(path.name[: -len(".safetensors")]) if path.name.endswith(".safetensors") else path
    name = str(init)
    if "/" in name or "\\" in name or name.endswith((".safetensors", ".json")):
        raise InputError(path, "does not exist (expected a run folder, a checkpoint or a shipped model name)")
    return shipped_model_dir(ALIASES.get(name, name)) / "model"


def _source_config(stem: Path) -> dict:
    for cand in (stem.with_name(stem.name + ".json"), stem.parent / "config.json"):
        if cand.is_file():
            try:
                return json.loads(cand.read_text()).get("model", {})
            except (json.JSONDecodeError, AttributeError):
                return {}
    return {}


def _hint(source: dict) -> str:
    if not source:
        return ""
    backbone = source.get("backbone", source.get("name"))
    return f"; the weights are a {backbone} with features {source.get('features')}: train with --model {backbone} and those widths"


def init_weights(model: nn.Module, init: str | Path, say: Callable[[str], None] = print) -> LoadReport:
    """Load ``init`` into ``model`` by name and shape and report it through ``say``."""
    stem = resolve_init(init)
    shipped = stem.name == "model"
    source = _source_config(stem)
    try:
        report = load_weights(model, stem, strict=False)
    except CheckpointError as exc:
        raise CheckpointError(exc.path, f"{exc.problem}{_hint(source)}") from None
    total = len(report.loaded) + len(report.missing)
    if shipped and len(report.loaded) < total / 2:
        raise CheckpointError(stem.with_suffix(".safetensors"), f"only {len(report.loaded)} of {total} tensors fit "
                              f"this network; refusing a mostly untrained start{_hint(source)}")
    groups = sorted({k.split(".")[0] for k in report.loaded})
    say(f"init from {stem}: {report.summary()}")
    if source.get("name") == "universal":
        say(f"  universal model ({source.get('backbone')}, classes {', '.join(source.get('class_names', []))}): "
            "its backbone loads, its class-prompt heads are not used")
    say(f"  loaded: {len(report.loaded)} tensors in {', '.join(groups)}")
    mismatched = {m.split(" ")[0] for m in report.mismatched}
    for m in report.mismatched:
        say(f"  skipped (shape differs, e.g. another number of output channels): {m}")
    for k in report.unexpected:
        say(f"  skipped (not in this model): {k}")
    fresh = [k for k in report.missing if k not in mismatched]
    if fresh:
        say(f"  newly initialised (not in the checkpoint): {', '.join(fresh[:8])}{' ...' if len(fresh) > 8 else ''}")
    return report


__all__ = ["ALIASES", "init_weights", "resolve_init"]
