"""Learning curves of the simulated annotator (:mod:`aemia.active.simulate`): aggregation over seeds, the
labels needed to reach a target, and the figure.


Aggregation over seeds (:func:`summarise_runs`), per point:

* ``mean``: the mean over seeds of the test metric, ``std``: its standard deviation over seeds;
* ``ci``: a 95% percentile-bootstrap interval over **test cases**, pooled over seeds: each of ``n_boot``
  resamples draws test cases with replacement once and applies the same draw to every seed (the test set is
  shared), and the statistic is the seed-mean metric on the resample (Dice: the mean of the per-case seed-mean
  Dice; AUC: the mean over seeds of each seed's AUC, resamples with one class skipped). The interval is the
  uncertainty due to the finite test set of the seed-averaged curve; seed-to-seed variation is ``std``.

:func:`labels_to_reach` interpolates the number of labels at which a mean curve first reaches a target (e.g.
95% of the full-label metric, :func:`~aemia.active.simulate.full_label_run`), as in the ACFT claim "reduces annotation efforts by at
least half compared with random selection".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aemia.utils.io import save_figure

__all__ = ["labels_to_reach", "plot_curves", "summarise_runs"]


def summarise_runs(runs: Sequence[dict[str, Any]], y_test: np.ndarray | None = None, n_boot: int = 1000,
                   boot_seed: int = 0) -> dict[str, Any]:
    """Mean curve over the seeds of one strategy, with seed std and the pooled test-case bootstrap CI
    (module docstring). ``y_test`` (test class labels) is needed for AUC curves. Returns
    ``{"metric", "n_seeds", "seeds", "points": [{"n_labels", "mean", "std", "ci": [lo, hi], "per_seed"}]}``."""
    from aemia.evaluate.metrics import bootstrap_ci, seed_mean_metric_ci

    if not runs:
        return {"metric": None, "n_seeds": 0, "seeds": [], "points": []}
    metric = runs[0]["metric"]
    n_points = min(len(r["points"]) for r in runs)
    points = []
    for i in range(n_points):
        pts = [r["points"][i] for r in runs]
        labels = {p["n_labels"] for p in pts}
        if len(labels) != 1:
            raise ValueError(f"point {i}: seeds disagree on the number of labels {sorted(labels)}")
        vals = np.array([np.nan if p["value"] is None else p["value"] for p in pts], dtype=float)
        if metric == "dice":
            per_case = np.mean([p["per_case"] for p in pts], axis=0)
            ci = bootstrap_ci(per_case, n_resamples=n_boot, seed=boot_seed)
        else:
            if y_test is None:
                raise ValueError("summarise_runs needs y_test for AUC curves")
            ci = seed_mean_metric_ci(y_test, [np.asarray(p["probs"], dtype=float) for p in pts], n_resamples=n_boot,
                                     seed=boot_seed)
        points.append({"round": pts[0]["round"], "n_labels": labels.pop(), "mean": float(np.nanmean(vals)),
                       "std": float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else 0.0,
                       "ci": [ci.lo, ci.hi], "per_seed": [None if not np.isfinite(v) else float(v) for v in vals],
                       "n_trained_on": [p["n_trained_on"] for p in pts], "n_hard": [p["n_hard"] for p in pts]})
    return {"metric": metric, "n_seeds": len(runs), "seeds": [r["seed"] for r in runs], "points": points}


def labels_to_reach(points: Sequence[dict[str, Any]], target: float) -> dict[str, Any]:
    """Labels at which the mean curve **first** reaches ``target``, linearly interpolated between the last
    point below and the first point at or above it.

    Returns ``{"labels": float | None, "reached": bool, "note": str}``; ``labels`` is None when the curve never
    reaches the target ("not reached"), and the first point's label count, with a note, when the curve starts
    at or above it (the true value is at most that).
    """
    xs = [float(p["n_labels"]) for p in points]
    ys = [float(p["mean"]) for p in points]
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return {"labels": x, "reached": True, "note": "at or above the target from the first point (upper bound)"}
            x0, y0 = xs[i - 1], ys[i - 1]
            lab = x0 + (target - y0) * (x - x0) / (y - y0) if y > y0 else x
            return {"labels": float(lab), "reached": True, "note": "interpolated"}
    return {"labels": None, "reached": False, "note": "not reached"}



def plot_curves(result: dict[str, Any], path: str | Path, title: str | None = None,
                reference: float | None = None) -> Path:
    """Metric vs number of labels, one line per strategy with its 95% CI band (and an optional horizontal
    ``reference``, e.g. 95% of the full-label metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    colours = plt.get_cmap("tab10")
    for i, (name, summ) in enumerate(result["strategies"].items()):
        pts = [p for p in summ["points"] if np.isfinite(p["mean"])]
        if not pts:
            continue
        xs = [p["n_labels"] for p in pts]
        ax.plot(xs, [p["mean"] for p in pts], "o-", ms=3, color=colours(i % 10), label=f"{name} (n={summ['n_seeds']})")
        lo = [p["ci"][0] if p["ci"][0] is not None and np.isfinite(p["ci"][0]) else p["mean"] for p in pts]
        hi = [p["ci"][1] if p["ci"][1] is not None and np.isfinite(p["ci"][1]) else p["mean"] for p in pts]
        ax.fill_between(xs, lo, hi, color=colours(i % 10), alpha=0.15, linewidth=0)
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=1, label="95% of full labels")
    metric = str(result.get("metric", "metric")).upper() if result.get("metric") == "auc" else "Dice"
    ax.set_xlabel("labelled cases")
    ax.set_ylabel(f"test {metric} (mean over seeds, 95% CI)")
    cfg = result.get("config", {})
    ax.set_title(title or f"{result.get('dataset', '')}: {cfg.get('mode', '')} fine-tuning, "
                          f"{cfg.get('per_round', '')} per round", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
