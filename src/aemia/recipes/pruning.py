"""Measure what UNet++ pruning buys on a run's test split: Dice and time per image for each L_d.

UNet++ (TMI 2020) reports that pruned sub-networks L_1..L_{L-1} are much faster with modest loss; because
the pruned network equals head d exactly, one trained model gives all of them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aemia.utils.io import save_figure
from aemia.evaluate import metrics as M
from aemia.infer.predictor import Predictor


def pruning_extras(run_dir: Path, cases: list[Any]) -> tuple[dict[str, Any], list[Any]]:
    """``extras`` for :func:`aemia.recipes.run.train_run`: the pruning table on the evaluated cases + its figure."""
    from aemia.data.image import Image

    images = [Image(np.moveaxis(c.image, -1, 0) if c.image.ndim == 3 else c.image[None], c.spacing) for c in cases]
    rows = pruning_table(run_dir, images, [c.gt for c in cases])
    if not rows:
        return {}, []
    from aemia.evaluate.report import Figure

    figure = pruning_figure(rows, Path(run_dir) / "figures" / "pruning.png")
    return {"pruning": rows}, [Figure(figure, "UNet++ pruned at inference (L1..L4): test Dice vs time per image")]


def pruning_table(run_dir: str | Path, images: list[Any], labels: list[np.ndarray], progress: bool = True) -> list[dict[str, Any]]:
    """For d = 1..L: parameters, median ms per image, mean Dice with 95% CI on the given cases."""
    from aemia.utils.progress import Bar

    base = Predictor.from_run(run_dir)
    depth = getattr(base.model, "depth", None)
    if depth is None or not hasattr(base.model, "prune"):
        return []
    rows = []
    with Bar("pruned heads", total=depth * len(images), enabled=progress) as bar:
        for d in range(1, depth + 1):
            pred = Predictor.from_run(run_dir, prune=d)
            times, dices = [], []
            for img, lab in zip(images, labels):
                t = time.perf_counter()
                with torch.inference_mode():
                    mask = pred.predict(img)
                times.append(time.perf_counter() - t)
                dices.append(M.dice(mask > 0, lab > 0))
                bar.advance()
            ci = M.bootstrap_ci(dices)
            rows.append({"depth": d, "parameters": sum(p.numel() for p in pred.model.parameters()),
                         "ms_per_image": 1000 * float(np.median(times)), "dice": ci.point, "ci": [ci.lo, ci.hi]})
    return rows


def pruning_figure(rows: list[dict[str, Any]], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    ms = [r["ms_per_image"] for r in rows]
    dice = [r["dice"] for r in rows]
    err = np.array([[r["dice"] - r["ci"][0] for r in rows], [r["ci"][1] - r["dice"] for r in rows]])
    ax.errorbar(ms, dice, yerr=err, fmt="o-", capsize=3)
    for r in rows:
        ax.annotate(f"L{r['depth']}", (r["ms_per_image"], r["dice"]), textcoords="offset points", xytext=(5, -12))
    ax.set_xlabel("ms per image (CPU)")
    ax.set_ylabel("test Dice (95% CI)")
    ax.set_title("UNet++ pruned at inference: speed vs accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
