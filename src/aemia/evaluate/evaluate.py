"""Evaluate a folder of predicted masks against a folder of ground-truth masks.

Cases are matched by case id = file name without its image suffix (``a.nii.gz``, ``a.png`` and ``a.jpg`` are
all case ``a``; a DICOM folder's id is its name), so PNG predictions can be scored against JPEG masks.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aemia.data.image import Image
from aemia.data.io import case_id, image_kind, read_image
from aemia.errors import InputError
from aemia.evaluate import metrics as M
from aemia.evaluate.report import Figure, overlay_figure, select_slice, write_report
from aemia.utils.io import write_json_atomic, write_text_atomic
from aemia.utils.progress import Bar

N_OVERLAYS = 2  # worst and best cases each


# ----------------------------------------------------------------------------------- finding cases


def find_cases(folder: str | Path) -> dict[str, Path]:
    """``{case_id: path}`` for the images in ``folder`` (hidden entries skipped); duplicate ids are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or image_kind(path) is None:
            continue
        cid = case_id(path)
        if cid in cases:
            raise InputError(folder, f"case '{cid}' appears twice: {cases[cid].name} and {path.name}")
        cases[cid] = path
    if not cases:
        raise InputError(folder, "holds no images")
    return cases


# ------------------------------------------------------------------------------------- mask values


def mask_labels(image: Image) -> np.ndarray:
    """Integer label map (spatial shape) from a mask image.

    Several channels (RGB masks) are collapsed with their maximum. 2D pictures whose maximum exceeds 20
    are 8-bit masks (0/255, or JPEG masks with compression noise) and are binarised at > 127; pictures with
    small values (0/1, 0..K) and all other formats keep their label values. Probability maps (floats within
    [0, 1]) are binarised at > 0.5.
    """
    arr = np.asarray(image.array)
    arr = arr[0] if arr.shape[0] == 1 else arr.max(axis=0)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr)
        if arr.size and arr.min() >= 0 and arr.max() <= 1 and not np.array_equal(arr, np.round(arr)):
            return (arr > 0.5).astype(np.uint8)
    if image.path is not None and image_kind(image.path) == "picture" and arr.size and arr.max() > 20:
        return (arr > 127).astype(np.uint8)
    return np.rint(arr).astype(np.int64)


def _read_pair(pred_path: Path, gt_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    gt_img, pred_img = read_image(gt_path), read_image(pred_path)
    gt, pred = mask_labels(gt_img), mask_labels(pred_img)
    if pred.shape != gt.shape:
        raise InputError(
            pred_path, f"prediction shape {pred.shape} does not match ground truth {gt_path} shape {gt.shape}"
        )
    return pred, gt, tuple(float(s) for s in gt_img.spacing)


def _display_image(path: Path | None) -> np.ndarray | None:
    """Channels-last display array ((H, W), (H, W, 3), or a 3D volume) of the case image, if any."""
    if path is None:
        return None
    arr = read_image(path).array
    if arr.ndim == 3 and arr.shape[0] in (3, 4):
        return np.moveaxis(arr[:3], 0, -1)
    return arr[0]


# ---------------------------------------------------------------------------------------- summary


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def summarise_lesions(
    per_case: list[dict[str, Any]], n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Pool :func:`~aemia.evaluate.metrics.lesion_detection` results over cases: per size bin the counts and
    pooled sensitivity (detected / lesions) with a case-resampling CI, plus false positives per case."""
    if not per_case:
        return {}
    bins = []
    for b, first in enumerate(per_case[0]["bins"]):
        n = np.array([c["bins"][b]["n_lesions"] for c in per_case])
        k = np.array([c["bins"][b]["n_detected"] for c in per_case])
        ci = M.bootstrap_ratio_ci(k, n, n_resamples, seed, alpha)
        bins.append({"label": first["label"], "lo_mm": first["lo_mm"], "hi_mm": first["hi_mm"],
                     "n_lesions": int(n.sum()), "n_detected": int(k.sum()), "sensitivity": ci.point,
                     "ci": [ci.lo, ci.hi]})
    n = np.array([c["n_lesions"] for c in per_case])
    k = np.array([c["n_detected"] for c in per_case])
    ci = M.bootstrap_ratio_ci(k, n, n_resamples, seed, alpha)
    fp = M.bootstrap_ci([c["false_positives"] for c in per_case], n_resamples, seed, alpha)
    return {
        "definition": "lesion = connected gt component (full connectivity); detected if any predicted voxel "
        "overlaps it; size = equivalent diameter in mm; false positive = predicted component touching no gt",
        "bins": bins,
        "overall": {"n_lesions": int(n.sum()), "n_detected": int(k.sum()), "sensitivity": ci.point,
                    "ci": [ci.lo, ci.hi]},
        "false_positives_per_case": M.ci_dict(fp),
    }


def _case_row(cid: str, seg: dict[str, dict[str, float]], les: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"case": cid}
    for cls, values in seg.items():
        row.update({f"{cls}_{name}": value for name, value in values.items()})
    if les is not None:
        row.update(lesions=les["n_lesions"], lesions_detected=les["n_detected"],
                   false_positive_components=les["false_positives"])
    return row


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _progress(description: str, total: int, enabled: bool) -> Bar:
    return Bar(description, total=total, enabled=enabled)


# ------------------------------------------------------------------------------------------- main


@dataclass
class EvalCase:
    """One case to score: label maps ``pred``/``gt`` (same shape), spacing in mm, optional display image
    (channels-last for 2D RGB, or a volume) for the overlays."""

    id: str
    pred: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, ...]
    image: np.ndarray | None = None


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path,
    classes: dict[int, str] | None = None,
    nsd_tolerance_mm: float = 1.0,
    image_dir: str | Path | None = None,
    size_bins_mm: Sequence[float] = M.DEFAULT_SIZE_BINS_MM,
    lesions: bool = True,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    title: str = "aemia evaluation",
) -> dict[str, Any]:
    """Score every ground-truth case against the prediction with the same case id.

    ``classes`` maps label values to names; ``None`` evaluates every nonzero label found (a single label 1
    is called ``foreground``). Writes ``metrics.json`` (summary with bootstrap 95% CIs and lesion sensitivity
    by size), ``per_case.csv``, ``report.html`` and ``figures/`` into ``out_dir``, and returns the summary
    (plus ``"outputs"`` with the three paths). Nothing is written if any input is unusable: a missing
    prediction or a shape mismatch raises :class:`InputError` naming the case / both files.
    """
    gt_cases, pred_cases = find_cases(gt_dir), find_cases(pred_dir)
    missing = [c for c in gt_cases if c not in pred_cases]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(pred_dir, f"no prediction for case '{missing[0]}'{more} (ground truth {gt_cases[missing[0]]})")
    image_cases = find_cases(image_dir) if image_dir is not None else {}
    cases = []
    with _progress("reading", len(gt_cases), progress) as bar:
        for cid, gt_path in gt_cases.items():
            pred, gt, spacing = _read_pair(pred_cases[cid], gt_path)
            cases.append(EvalCase(cid, pred, gt, spacing, _display_image(image_cases.get(cid))))
            bar.advance()
    extra = {"pred_dir": str(pred_dir), "gt_dir": str(gt_dir),
             "unmatched_predictions": sorted(c for c in pred_cases if c not in gt_cases)}
    return evaluate_cases(cases, out_dir, classes, nsd_tolerance_mm, size_bins_mm, lesions, n_resamples, seed,
                          progress, title, extra=extra)


def evaluate_cases(
    cases: Sequence[EvalCase],
    out_dir: str | Path,
    classes: dict[int, str] | None = None,
    nsd_tolerance_mm: float = 1.0,
    size_bins_mm: Sequence[float] = M.DEFAULT_SIZE_BINS_MM,
    lesions: bool = True,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    title: str = "aemia evaluation",
    extra: dict[str, Any] | None = None,
    curves: dict[str, Sequence[float]] | None = None,
    extra_figures: Sequence[Figure] = (),
    lesion_label: int | None = None,
) -> dict[str, Any]:
    """Score in-memory cases and write ``metrics.json``, ``per_case.csv``, ``report.html`` and ``figures/``.

    ``classes`` maps label values to names (background excluded); ``extra`` fields are added to the summary
    (e.g. the run's recipe) and ``curves`` adds a learning-curve figure to the report. Lesions are the connected
    components of every foreground label, or of ``lesion_label`` only (e.g. tumor inside an organ).
    """
    if classes is not None:
        classes = {k: v for k, v in classes.items() if k != 0}
    seg_cases: list[dict[int, dict[str, float]]] = []
    les_cases: list[dict[str, Any]] = []
    found: set[int] = set()
    with _progress("evaluating", len(cases), progress) as bar:
        for case in cases:
            pred, gt, spacing = case.pred, case.gt, case.spacing
            if pred.shape != gt.shape:
                raise InputError(None, f"case {case.id}: prediction shape {pred.shape} differs from ground truth {gt.shape}")
            labels = sorted(classes) if classes is not None else sorted(
                int(v) for v in np.union1d(np.unique(gt), np.unique(pred)) if v != 0)
            found.update(labels)
            seg_cases.append({lab: M.binary_case_metrics(pred == lab, gt == lab, spacing, nsd_tolerance_mm)
                              for lab in labels})
            if lesions:
                if lesion_label is None:
                    les_cases.append(M.lesion_detection(pred != 0, gt != 0, spacing, size_bins_mm))
                else:
                    les_cases.append(M.lesion_detection(pred == lesion_label, gt == lesion_label, spacing,
                                                        size_bins_mm))
            bar.advance()

    if classes is None:
        labels = sorted(found)
        classes = {1: "foreground"} if labels == [1] else {lab: f"label_{lab}" for lab in labels}
    both_empty = {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, "hd95_worst_case": 0.0}
    per_case = [{name: case.get(lab, dict(both_empty)) for lab, name in classes.items()} for case in seg_cases]
    ids = [c.id for c in cases]
    rows = [_case_row(cid, seg, les_cases[i] if lesions else None)
            for i, (cid, seg) in enumerate(zip(ids, per_case))]

    # worst / best cases by mean Dice over classes
    mean_dice = [float(np.mean([m["dice"] for m in seg.values()])) if seg else math.nan for seg in per_case]
    order = [i for i in np.argsort(mean_dice, kind="stable") if math.isfinite(mean_dice[i])]
    worst, best = order[:N_OVERLAYS], [i for i in reversed(order[-N_OVERLAYS:]) if i not in order[:N_OVERLAYS]]

    summary: dict[str, Any] = {
        "n_cases": len(cases),
        **(extra or {}),
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "distance_unit": "mm (2D pictures have no spacing: 1 pixel = 1 mm)",
        "classes": {str(k): v for k, v in classes.items()},
        "bootstrap": {"method": "case-level percentile", "n_resamples": n_resamples, "alpha": 0.05, "seed": seed},
        "segmentation": M.summarise(per_case, n_resamples, seed),
        "lesion_detection": summarise_lesions(les_cases, n_resamples, seed) if lesions else {},
        "worst_cases": [{"case": ids[i], "mean_dice": mean_dice[i]} for i in worst],
        "best_cases": [{"case": ids[i], "mean_dice": mean_dice[i]} for i in best],
    }
    summary = _json_safe(summary)

    out = Path(out_dir)
    figures = list(extra_figures)
    for kind, picks in (("worst", worst), ("best", best)):
        for i in picks:
            figures.append(_overlay(cases[i], kind, mean_dice[i], out / "figures"))
    write_text_atomic(out / "per_case.csv", _csv_text(rows))
    report = write_report(out, summary, rows, figures, curves, title)
    write_json_atomic(out / "metrics.json", summary)
    return dict(summary, outputs={"metrics_json": str(out / "metrics.json"),
                                  "per_case_csv": str(out / "per_case.csv"), "report_html": str(report)})


def _overlay(case: EvalCase, kind: str, dice_value: float, fig_dir: Path) -> Figure:
    pred, gt, image = case.pred, case.gt, case.image
    if image is not None and image.shape[: gt.ndim] != gt.shape:
        image = None  # image does not line up with the mask: show contours only
    caption = f"{kind}: {case.id} (mean Dice {dice_value:.3f})"
    if gt.ndim == 3:
        image, gt, pred, index = select_slice(image, gt != 0, pred != 0)
        caption += f", slice {index}"
    path = overlay_figure(image, gt != 0, pred != 0, caption, fig_dir / f"{kind}_{case.id}.png")
    return Figure(path, caption)
