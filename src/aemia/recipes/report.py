"""Evaluate a finished run on its evaluation split and write metrics.json, per_case.csv and report.html."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aemia.data.catalog import CatalogDataset
from aemia.evaluate import metrics as M
from aemia.evaluate.evaluate import EvalCase, evaluate_cases
from aemia.evaluate.report import Figure, write_report
from aemia.infer.predictor import Predictor
from aemia.runs.folder import RunFolder
from aemia.utils.io import write_text_atomic


#: ``extras(run_dir, cases) -> (metrics, figures)``
Extras = Callable[[Path, list[EvalCase]], tuple[dict[str, Any], list[Any]]]


def _curves(history: list[dict[str, Any]]) -> dict[str, list[float]]:
    keys = ["train_loss"] + sorted({k for h in history for k in h if k.startswith("val_") and k != "val_metric"})
    curves: dict[str, list[float]] = {"epoch": [h["epoch"] + 1 for h in history]}
    for k in keys:
        curves[k] = [float(h.get(k, float("nan"))) for h in history]
    return curves


def _recipe(cfg: Any, labelled: list[str], history: list[dict[str, Any]]) -> dict[str, Any]:
    best = max((h for h in history if "val_metric" in h), key=lambda h: h["val_metric"], default=None)
    return {
        "dataset": cfg.dataset,
        "model": cfg.model,
        "features": ",".join(map(str, cfg.widths())),
        "label_fraction": cfg.label_fraction,
        "labelled_cases": len(labelled),
        "epochs_run": len(history),
        "best_epoch": None if best is None else best["epoch"] + 1,
        "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
        "eval_split": cfg.eval_split,
        "tta": cfg.tta,
    }


def evaluate_run(run_dir: str | Path, cfg: Any, ds: CatalogDataset, history: list[dict[str, Any]],
                 labelled: list[str], progress: bool = True, extras: Extras | None = None) -> dict[str, Any]:
    """Predict the evaluation split with the best checkpoint and write metrics, per-case table and report.

    ``extras(run_dir, cases)`` may add analyses (e.g. the UNet++ pruning table): it returns extra metrics and
    figures that go into ``metrics.json`` and the report.
    """
    run_dir = Path(run_dir)
    predictor = Predictor.from_run(run_dir, device=cfg.train.device)  # fp32 evaluation: exact and comparable
    recipe = _recipe(cfg, labelled, history)
    split = cfg.eval_split
    title = f"aemia run: {cfg.model} on {cfg.dataset} ({cfg.label_fraction:.0%} of training labels)"
    from aemia.recipes.run import resolve_task

    if resolve_task(cfg, ds) == "classification":
        return _evaluate_classification(run_dir, predictor, ds, split, recipe, history, title, extras)
    cases = []
    if ds.dims == 2:
        for case in ds.splits[split]:
            s = ds.load(case)
            pred = predictor.predict(s.image)
            img = s.image.array
            display = np.moveaxis(img[:3], 0, -1) if img.shape[0] >= 3 else img[0]
            cases.append(EvalCase(case.id, pred, s.label.astype(np.int64), s.image.spacing, display))
    else:
        from aemia.recipes.run import remap_labels

        for case in ds.splits[split]:
            s = ds.load(case)
            pred = predictor.predict(s.image)
            cases.append(EvalCase(case.id, pred, remap_labels(s.label, cfg.labels), s.image.spacing,
                                  s.image.array[0]))
    from aemia.runs.config import class_names

    classes = class_names(cfg, ds)
    more, figures = extras(run_dir, cases) if extras is not None else ({}, [])
    summary = evaluate_cases(cases, run_dir, classes, progress=progress, title=title,
                             extra={"run": recipe, **more}, curves=_curves(history), lesions=True,
                             extra_figures=[Figure(Path(f)) if not isinstance(f, Figure) else f for f in figures])
    fg = [name for k, name in classes.items() if k != 0]
    dice_mean = float(np.mean([summary["segmentation"][n]["dice"]["mean"] for n in fg]))
    first = summary["segmentation"][fg[0]]["dice"]
    summary["headline"] = (f"test Dice {dice_mean:.3f}" + (f" (95% CI {first['ci'][0]:.3f}-{first['ci'][1]:.3f})"
                                                            if len(fg) == 1 else " (mean over classes)"))
    RunFolder(run_dir).save_metrics({k: v for k, v in summary.items() if k != "outputs"})
    return summary


def _evaluate_classification(run_dir: Path, predictor: Predictor, ds: CatalogDataset, split: str,
                             recipe: dict[str, Any], history: list[dict[str, Any]], title: str,
                             extras: Extras | None = None) -> dict[str, Any]:
    x, _, targets = ds.arrays(split, predictor.size)
    probs = []
    with torch.no_grad():
        for start in range(0, len(x), 256):
            from aemia.nets.predict import predict_probs

            probs.append(predict_probs(predictor.model, torch.from_numpy(x[start:start + 256]), tta=predictor.tta).cpu().numpy())
    p = np.concatenate(probs)
    y = np.asarray(targets)
    pred = p.argmax(1)
    scores = p[:, 1] if p.shape[1] == 2 else p
    auc = M.bootstrap_metric_ci(y, scores, M.auc)
    acc = M.bootstrap_ci((pred == y).astype(float))
    cls: dict[str, Any] = {"auc": M.ci_dict(auc), "accuracy": M.ci_dict(acc)}
    if p.shape[1] == 2:
        sens = M.bootstrap_ci((pred[y == 1] == 1).astype(float))
        spec = M.bootstrap_ci((pred[y == 0] == 0).astype(float))
        cls.update(sensitivity=M.ci_dict(sens), specificity=M.ci_dict(spec))
    ids = ds.case_ids(split)
    rows = [{"case": cid, "target": int(t), "predicted": int(k), **{f"p_{ds.classes[j]}": float(v) for j, v in enumerate(row)}}
            for cid, t, k, row in zip(ids, y, pred, p)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    folder = RunFolder(run_dir)
    write_text_atomic(folder.per_case_path, buf.getvalue())
    more, figures = extras(run_dir, []) if extras is not None else ({}, [])  # no per-case images to pass
    summary = {"n_cases": len(y), "run": recipe, "classes": ds.classes, "classification": cls, **more,
               "headline": f"test AUC {auc.point:.3f} (95% CI {auc.lo:.3f}-{auc.hi:.3f})"}
    write_report(run_dir, summary, rows, [f if isinstance(f, Figure) else Figure(Path(f)) for f in figures] or None,
                 _curves(history), title)
    folder.save_metrics(summary)
    return summary
