"""An optimiser's state as flat tensors plus a JSON part, for the Trainer's safetensors checkpoint.

The Trainer stores its own optimiser under ``optim/…`` and each optimiser a hook owns
(:meth:`aemia.train.hooks.Hook.optimizers`) under ``hookopt/<hook index>/<name>/…``; the JSON parts (param
groups and non-tensor state) go into the checkpoint's metadata.
"""

from __future__ import annotations

from typing import Any

import torch


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer``'s state: its tensors as ``{prefix}/{param index}/{key}``, and a JSON-able dict with the param
    groups and the non-tensor state values."""
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    as_json: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
    for pid, st in opt["state"].items():
        as_json["state"][str(pid)] = {}
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{prefix}/{pid}/{key}"] = val.detach().contiguous().cpu()
            else:
                as_json["state"][str(pid)][key] = val
    return tensors, as_json


def load_optimizer_state(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor],
                         as_json: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`optimizer_state_tensors` returned for ``prefix``."""
    state: dict[str, Any] = {"param_groups": as_json["param_groups"], "state": {}}
    for pid, st in as_json["state"].items():
        state["state"][int(pid)] = dict(st)
    for k, v in tensors.items():
        if k.startswith(prefix + "/"):
            pid, key = k[len(prefix) + 1:].split("/", 1)
            state["state"].setdefault(int(pid), {})[key] = v.to(device)
    optimizer.load_state_dict(state)


__all__ = ["load_optimizer_state", "optimizer_state_tensors"]
