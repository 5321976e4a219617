"""Test-split scores of a universal (or specialist) model on one of its data sets, with bootstrap 95% CIs.

Segmentation classes: Dice per image at the training resolution (masks resized with nearest neighbours, the
published post-processing applied), mean over images. Image-level labels: AUC of the data set's head
(macro one-vs-rest for more than two classes). ``scores`` keeps the per-case values so two models can be
compared on the same cases (paired bootstrap).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from aemia.evaluate.metrics import auc, bootstrap_ci, bootstrap_metric_ci, ci_dict, dice
from aemia.universal.data import spec_of, split_arrays
from aemia.universal.model import UniversalModel
from aemia.universal.postprocess import post_process


@torch.no_grad()
def _outputs(model: UniversalModel, x: np.ndarray, batch: int = 16) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    segs, heads = [], {n: [] for n in model.heads}
    for i in range(0, len(x), batch):
        out = model.forward_all(torch.from_numpy(x[i:i + batch]))
        segs.append(torch.sigmoid(out["seg"]).numpy())
        for n, v in out["heads"].items():
            heads[n].append(torch.softmax(v, 1).numpy())
    return np.concatenate(segs), {n: np.concatenate(v) for n, v in heads.items()}


def evaluate_dataset(model: UniversalModel, name: str, split: str = "test") -> dict[str, Any]:
    """``{"dice": {...}, "auc": {...}, "per_case": {"dice": [...], "scores": [[...]], "targets": [...]}}``."""
    model.eval()
    spec = spec_of(name)
    x, y, t = split_arrays(name, split)
    seg, heads = _outputs(model, x)
    out: dict[str, Any] = {"n_cases": int(len(x)), "per_case": {}}
    for value, cls in spec.classes.items():
        k = model.class_names.index(cls)
        values = []
        for i in range(len(x)):
            pred = post_process({cls: seg[i, k] > 0.5})[cls]
            values.append(dice(pred, y[i] == value))
        out["dice"] = ci_dict(bootstrap_ci(values))
        out["per_case"]["dice"] = [float(v) for v in values]
    if spec.head and name in heads:
        probs = heads[name]
        scores = probs[:, 1] if probs.shape[1] == 2 else probs
        out["auc"] = ci_dict(bootstrap_metric_ci(t, scores, auc))
        out["per_case"]["scores"] = probs.tolist()
        out["per_case"]["targets"] = [int(v) for v in t]
    return out


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a − b on the same cases: Dice by a bootstrap of per-image differences, AUC by resampling cases."""
    diff: dict[str, Any] = {}
    if "dice" in a.get("per_case", {}) and "dice" in b.get("per_case", {}):
        d = np.asarray(a["per_case"]["dice"]) - np.asarray(b["per_case"]["dice"])
        diff["dice"] = ci_dict(bootstrap_ci(d))
    if "scores" in a.get("per_case", {}) and "scores" in b.get("per_case", {}):
        sa, sb = np.asarray(a["per_case"]["scores"]), np.asarray(b["per_case"]["scores"])
        t = np.asarray(a["per_case"]["targets"])
        if sa.shape[1] == 2:
            sa, sb = sa[:, 1:], sb[:, 1:]
        width = sa.shape[1]

        def delta(y: np.ndarray, s: np.ndarray) -> float:
            one = (lambda z: z[:, 0]) if width == 1 else (lambda z: z)
            return auc(y, one(s[:, :width])) - auc(y, one(s[:, width:]))

        diff["auc"] = ci_dict(bootstrap_metric_ci(t, np.concatenate([sa, sb], axis=1), delta))
    return diff


__all__ = ["evaluate_dataset", "paired_difference"]
