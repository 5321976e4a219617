"""Semi-supervised training for 2D runs, as trainer hooks that learn from the unlabelled part of the training
split: mean teacher (:mod:`aemia.semisup.mean_teacher`) and pseudo-labelling (:mod:`aemia.semisup.pseudo_label`).

``aemia train --semi mean-teacher|pseudo-label`` (``RunConfig.semi``) builds the hook with
:func:`resolve_settings` + :func:`make_hook`; every epoch's log line gets ``semi_loss`` (the unweighted
unlabelled term), ``semi_weight`` (its ramped weight) and, for pseudo-labels, ``semi_accepted`` (the accepted
share of unlabelled images or pixels). :func:`semi_figure` draws them with the validation metric.

Run defaults (the weight is the maximum reached after the ramp-up):

* mean teacher: EMA decay 0.99 (paper); weight 10 for classification (toolkit choice: the paper uses 100 on
  CIFAR-10 over 300 epochs; on a few CPU epochs so strong a pull towards the barely trained teacher holds the
  student back) and 0.1 for segmentation (UA-MT, Yu et al. MICCAI 2019, the usual value for a per-pixel MSE
  consistency). Measured on Kvasir 5% (UNet++, 120 steps, seed 0): weight 10 cost 6 Dice points (0.446 vs
  0.508 supervised, student and teacher alike), weight 1 about 2 (0.491): a strong per-pixel pull towards an
  early teacher that under-segments the polyps shrinks the student's masks;
* pseudo-label: weight 1 (FixMatch λ_u), threshold 0.95 for classification (FixMatch τ), 0.9 per pixel for
  segmentation (toolkit choice);
* ramp-up over 30% of the epochs (the paper's 80 of 180–300 epochs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aemia.runs.config import SEMI_METHODS, check_method
from aemia.runs.folder import RunFolder
from aemia.utils.io import save_figure
from aemia.semisup.mean_teacher import (
    MeanTeacherConfig,
    MeanTeacherHook,
    UnlabelledHook,
    UnlabelledStream,
    consistency_loss,
    default_rampup_epochs,
    ema_alpha,
    ema_update,
    perturb,
    sigmoid_rampup,
    unflip,
)
from aemia.semisup.pseudo_label import (
    PseudoLabelConfig,
    PseudoLabelHook,
    cap_per_class,
    class_weights,
    pseudo_label_loss,
    select_pseudo_labels,
)

__all__ = [
    "SEMI_METHODS", "SemiRun", "SemiSettings", "resolve_settings", "make_hook", "unlabelled_images", "semi_figure",
    "semi_extras", "record_semi",
    "MeanTeacherConfig", "MeanTeacherHook", "PseudoLabelConfig", "PseudoLabelHook", "UnlabelledHook",
    "UnlabelledStream", "consistency_loss", "default_rampup_epochs", "ema_alpha", "ema_update", "perturb",
    "sigmoid_rampup", "unflip", "cap_per_class", "class_weights", "pseudo_label_loss", "select_pseudo_labels",
]

_DEFAULT_WEIGHT = {("mean-teacher", "classification"): 10.0, ("mean-teacher", "segmentation"): 0.1,
                   ("pseudo-label", "classification"): 1.0, ("pseudo-label", "segmentation"): 1.0}
_DEFAULT_THRESHOLD = {"classification": 0.95, "segmentation": 0.9}


@dataclass
class SemiSettings:
    """A run's resolved semi-supervised settings (what ``metrics.json`` and the report record)."""

    method: str
    weight: float
    threshold: float | None
    rampup_epochs: float
    ema_decay: float | None
    unlabelled_cases: int
    evaluated_with: str  # "teacher" (EMA weights) or "student"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_settings(method: str, task: str, epochs: int, weight: float | None = None,
                     threshold: float | None = None, unlabelled_cases: int = 0) -> SemiSettings:
    """Fill the run defaults (module docstring) for ``method`` on ``task`` (segmentation | classification)."""
    method = check_method(method)
    if task not in _DEFAULT_THRESHOLD:
        raise ValueError(f"semi-supervised training is for segmentation or classification, not {task!r}")
    w = _DEFAULT_WEIGHT[(method, task)] if weight is None else float(weight)
    if w < 0:
        raise ValueError(f"semi weight must be ≥ 0, got {w}")
    thr = None
    if method == "pseudo-label":
        thr = _DEFAULT_THRESHOLD[task] if threshold is None else float(threshold)
        if not 0.0 < thr <= 1.0:
            raise ValueError(f"semi threshold must be in (0, 1], got {thr}")
    mt = method == "mean-teacher"
    return SemiSettings(method=method, weight=w, threshold=thr, rampup_epochs=default_rampup_epochs(epochs),
                        ema_decay=MeanTeacherConfig.ema_decay if mt else None, unlabelled_cases=int(unlabelled_cases),
                        evaluated_with="teacher" if mt else "student")


def make_hook(settings: SemiSettings, images: np.ndarray, n_classes: int, batch_size: int, seed: int) -> UnlabelledHook:
    """The trainer hook for ``settings`` over unlabelled ``images`` (N, C, H, W) (one batch per step)."""
    stream = UnlabelledStream(images, batch_size, seed=seed)
    if settings.method == "mean-teacher":
        cfg = MeanTeacherConfig(weight=settings.weight, rampup_epochs=settings.rampup_epochs,
                                ema_decay=settings.ema_decay or MeanTeacherConfig.ema_decay)
        return MeanTeacherHook(stream, cfg, seed=seed)
    pcfg = PseudoLabelConfig(weight=settings.weight, threshold=float(settings.threshold or 0.95),
                             rampup_epochs=settings.rampup_epochs)
    return PseudoLabelHook(stream, n_classes, pcfg, seed=seed)


def semi_figure(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Per epoch: the unlabelled loss term and its weight (left); the validation metric and, for pseudo-labels,
    the accepted share (right). Written atomically to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    epochs = [int(h["epoch"]) + 1 for h in history]

    def series(key: str) -> list[float]:
        return [float(h.get(key, float("nan"))) for h in history]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110)
    ax1.plot(epochs, series("semi_loss"), "o-", label="unlabelled loss (unweighted)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1b = ax1.twinx()
    ax1b.plot(epochs, series("semi_weight"), "--", color="grey", label="weight w(t)")
    ax1b.set_ylabel("weight")
    w = [v for v in series("semi_weight") if v == v]
    ax1b.set_ylim(0.0, 1.05 * max(w) if w and max(w) > 0 else 1.0)
    lines = ax1.get_lines() + ax1b.get_lines()
    ax1.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2),
               ncol=2, frameon=False)
    ax1.grid(alpha=0.3)
    metric_key = next((k for k in ("val_dice", "val_auc") if any(k in h for h in history)), "val_metric")
    ax2.plot(epochs, series(metric_key), "o-", color="tab:green", label=metric_key.replace("_", " "))
    if any("semi_accepted" in h for h in history):
        ax2.plot(epochs, series("semi_accepted"), "s-", color="tab:orange", label="accepted pseudo-labels")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(-0.02, 1.02)
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def semi_extras(settings: SemiSettings, figure: Path,
                inner: Callable[[Path, list[Any]], tuple[dict[str, Any], list[Any]]] | None = None
                ) -> Callable[[Path, list[Any]], tuple[dict[str, Any], list[Any]]]:
    """An ``extras`` for :func:`aemia.recipes.report.evaluate_run` that adds the semi settings and figure to the
    report, after whatever ``inner`` adds (segmentation and classification runs alike)."""
    from aemia.evaluate.report import Figure

    def extras(run_dir: Path, cases: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        more, figures = inner(run_dir, cases) if inner is not None else ({}, [])
        caption = (f"Semi-supervised ({settings.method}): unlabelled loss, its weight and the validation metric "
                   "per epoch")
        return {**more, "semi": settings.to_dict()}, [*figures, Figure(Path(figure), caption)]

    return extras


def record_semi(run_dir: str | Path, summary: dict[str, Any], settings: SemiSettings) -> dict[str, Any]:
    """Add the settings to the summary's ``run`` recipe (``semi``, ``semi_weight``, ``semi_threshold``, …) and
    rewrite ``metrics.json``."""
    recipe = dict(summary.get("run", {}))
    recipe.update({"semi": settings.method, "semi_weight": settings.weight, "semi_threshold": settings.threshold,
                   "semi_rampup_epochs": settings.rampup_epochs, "semi_unlabelled_cases": settings.unlabelled_cases,
                   "semi_evaluated_with": settings.evaluated_with})
    summary = {**summary, "run": recipe}
    RunFolder(run_dir).save_metrics({k: v for k, v in summary.items() if k != "outputs"})
    return summary


# ------------------------------------------------------------------------------ aemia train --semi (run extension)
def unlabelled_images(cfg: Any, ds: Any, labelled: list[str]) -> np.ndarray:
    """Semi-supervised runs: the training images outside the labelled subset, at the run's size and
    normalisation (the same arrays the labelled images come from)."""
    from aemia.errors import InputError

    if ds.dims != 2:
        raise InputError(None, f"--semi is for 2D data sets; '{ds.name}' is {ds.dims}D")
    x = ds.arrays("train", cfg.size)[0]
    keep = set(labelled)
    idx = [i for i, cid in enumerate(ds.case_ids("train")) if cid not in keep]
    if not idx:
        raise InputError(None, "--semi needs unlabelled training images: use a --label-fraction below 1")
    return x[idx]


class SemiRun:
    """One run's semi-supervised part (:class:`aemia.train.extensions.SemiRun`): the hook, then after training the
    ``figures/semi.png`` curves, the settings in the report and in ``metrics.json``'s recipe."""

    def __init__(self, cfg: Any, ds: Any, labelled: list[str], task: str, n_classes: int) -> None:
        images = unlabelled_images(cfg, ds, labelled)
        self.settings = resolve_settings(cfg.semi or "", task, cfg.train.epochs, cfg.semi_weight, cfg.semi_threshold,
                                         unlabelled_cases=len(images))
        cfg.semi_weight, cfg.semi_threshold = self.settings.weight, self.settings.threshold
        self.hook = make_hook(self.settings, images, n_classes, cfg.train.batch_size, cfg.train.seed)
        self.dataset = cfg.dataset

    def report(self, run_dir: Path, history: list[dict[str, Any]], evaluate: Callable[[Any], dict[str, Any]],
               extras: Any) -> dict[str, Any]:
        figure = semi_figure(history, Path(run_dir) / "figures" / "semi.png", f"{self.dataset}: {self.settings.method}")
        summary = evaluate(semi_extras(self.settings, figure, extras))
        return record_semi(run_dir, summary, self.settings)


def _register() -> None:
    from aemia.train.extensions import register_semi_method

    for method in SEMI_METHODS:
        register_semi_method(method, SemiRun)


_register()
