"""MB-DCNN's evaluation summaries: Jaccard and AUC with bootstrap CIs per arm and their paired differences,
the one-line headline, ``per_case.csv`` rows and the held-out-cases figure (IEEE TMI 2020, METHODS.md §7.2)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aemia.semisup.mbdcnn_data import LesionCases
from aemia.utils.io import save_figure

__all__ = ["csv_text", "figure", "headline", "per_case_rows", "read_per_case", "summarise_predictions"]


def _auc_ci(y: np.ndarray, scores: np.ndarray, n_boot: int, seed: int, metric: Any = None) -> dict[str, Any]:
    from aemia.evaluate.metrics import auc, bootstrap_metric_ci, ci_dict

    fn = metric or auc
    try:
        return ci_dict(bootstrap_metric_ci(y, scores, fn, n_resamples=n_boot, seed=seed))
    except ValueError:  # a single class among the cases: AUC undefined
        return {"mean": math.nan, "ci": [math.nan, math.nan], "n": int(len(y)), "n_excluded": int(len(y))}


def summarise_predictions(targets: np.ndarray, jaccard: dict[str, np.ndarray], probs: dict[str, np.ndarray],
                          pos: int, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Jaccard (per-image mean, bootstrap CI) per segmentation arm and the paired enhanced − coarse difference;
    positive-class-vs-rest AUC and macro one-vs-rest AUC per classifier arm with bootstrap CIs (cases resampled),
    the paired mask-guided − plain differences, and accuracy."""
    from aemia.evaluate.metrics import auc, bootstrap_ci, ci_dict

    y = np.asarray(targets)
    out: dict[str, Any] = {"jaccard": {k: ci_dict(bootstrap_ci(v, n_boot, seed)) for k, v in jaccard.items()}}
    if "enhanced" in jaccard and "coarse" in jaccard:
        diff = jaccard["enhanced"] - jaccard["coarse"]
        out["jaccard"]["enhanced_minus_coarse"] = ci_dict(bootstrap_ci(diff, n_boot, seed))
    if "coarse_continued" in jaccard and "enhanced" in jaccard:
        out["jaccard"]["enhanced_minus_coarse_continued"] = ci_dict(
            bootstrap_ci(jaccard["enhanced"] - jaccard["coarse_continued"], n_boot, seed))
    out["auc_melanoma"] = {k: _auc_ci((y == pos).astype(int), p[:, pos], n_boot, seed) for k, p in probs.items()}
    out["auc_macro"] = {k: _auc_ci(y, p, n_boot, seed) for k, p in probs.items()}
    out["accuracy"] = {k: float((p.argmax(1) == y).mean()) for k, p in probs.items()}
    pairs = [("plain", "mask_guided"), ("plain", "mask_guided_9crop"), ("plain_9crop", "mask_guided_9crop")]
    for a, b in pairs:
        if a in probs and b in probs:
            key = f"{b}_minus_{a}"
            bin_scores = np.stack([probs[a][:, pos], probs[b][:, pos]], 1)
            out["auc_melanoma"][key] = _auc_ci((y == pos).astype(int), bin_scores, n_boot, seed,
                                               lambda yy, s: auc(yy, s[:, 1]) - auc(yy, s[:, 0]))
            out["auc_macro"][key] = _auc_ci(y, np.stack([probs[a], probs[b]], 1), n_boot, seed,
                                            lambda yy, s: auc(yy, s[:, 1]) - auc(yy, s[:, 0]))
    return out


def headline(metrics: dict[str, Any]) -> str:
    """One line: Jaccard coarse → enhanced and positive-class AUC plain → mask-guided (9-crop)."""
    j, a = metrics["jaccard"], metrics["auc_melanoma"]

    def f(d: dict[str, Any]) -> str:
        lo, hi = d["ci"]
        return f"{d['mean']:.3f} [{lo:.3f}, {hi:.3f}]"

    name = metrics.get("positive_class", "melanoma")
    return (f"Jaccard coarse {f(j['coarse'])} -> enhanced {f(j['enhanced'])}; {name} AUC plain {f(a['plain'])} -> "
            f"mask-guided {f(a['mask_guided'])}, 9-crop {f(a['mask_guided_9crop'])} (n = {metrics.get('n_test')})")


def per_case_rows(ids: Sequence[str], targets: np.ndarray, classes: list[str], jaccard: dict[str, np.ndarray],
                  probs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    for i, cid in enumerate(ids):
        row: dict[str, Any] = {"id": cid, "target": int(targets[i]), "class": classes[int(targets[i])]}
        for k, v in jaccard.items():
            row[f"jaccard_{k}"] = round(float(v[i]), 6)
        for k, p in probs.items():
            for c in range(p.shape[1]):
                row[f"p_{k}_{c}"] = round(float(p[i, c]), 6)
        rows.append(row)
    return rows


def read_per_case(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``per_case.csv`` with numbers parsed (``id`` and ``class`` stay strings)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: (v if k in ("id", "class") else (int(v) if k == "target" else float(v))) for k, v in r.items()}
            for r in rows]


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["id"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def figure(path: Path, te: LesionCases, seg: dict[str, np.ndarray], masks: np.ndarray, cams: np.ndarray,
            jac: dict[str, np.ndarray], p_mask: np.ndarray, pos: int, n_cases: int) -> None:
    """Rows = test cases with the largest Jaccard change; columns image, coarse mask, CAM, enhanced mask, truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-np.abs(jac["enhanced"] - jac["coarse"]), kind="stable")[:n_cases]
    cols = ["image", "coarse mask", "CAM (Mask-CN)", "enhanced mask", "truth"]
    fig, axes = plt.subplots(len(order), 5, figsize=(11, 2.3 * len(order)), squeeze=False)
    for r, i in enumerate(order):
        img = np.clip(te.x[i].transpose(1, 2, 0), 0, 1)
        panels = [img, seg["coarse"][i], cams[i, 0], seg["enhanced"][i], te.y[i]]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            if c == 2:
                ax.imshow(img)
                ax.imshow(panel, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            elif c == 0:
                ax.imshow(panel)
            else:
                ax.imshow(img)
                ax.contour(panel, levels=[0.5], colors=["yellow" if c != 4 else "lime"], linewidths=1.2)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r][0].set_ylabel(f"{te.ids[i]}\n{te.classes[int(te.t[i])]}", fontsize=8)
        axes[r][1].set_xlabel(f"J {jac['coarse'][i]:.2f}", fontsize=8)
        axes[r][3].set_xlabel(f"J {jac['enhanced'][i]:.2f}", fontsize=8)
        axes[r][2].set_xlabel(f"p({te.classes[pos]}) {p_mask[i, pos]:.2f}", fontsize=8)
    fig.suptitle("MB-DCNN on held-out cases (largest Jaccard change first)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
