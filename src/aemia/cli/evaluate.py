"""``aemia evaluate``: score predicted masks against ground truth and write metrics.json, per_case.csv, report.html."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer

from aemia.cli import validate as v

from aemia.errors import InputError

HELP = """Score a folder of predicted masks against ground-truth masks (matched by file name without suffix).

Writes metrics.json (means with 95% bootstrap CIs, lesion sensitivity by size), per_case.csv and report.html.

Example: aemia evaluate --pred runs/demo/predictions --gt ../shared/data/kvasir_seg_256/masks --out runs/demo/eval
"""


def parse_classes(text: str | None) -> dict[int, str] | None:
    """``"1=liver,2=spleen"`` → ``{1: "liver", 2: "spleen"}``; ``"1,2"`` → ``{1: "label_1", 2: "label_2"}``."""
    if not text:
        return None
    out: dict[int, str] = {}
    for item in text.split(","):
        key, _, name = item.strip().partition("=")
        try:
            label = int(key)
        except ValueError:
            raise InputError(None, f"--classes: '{item.strip()}' is not LABEL or LABEL=NAME (e.g. 1=liver,2=spleen)")
        out[label] = name.strip() or f"label_{label}"
    return out


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def _ci(lo: Any, hi: Any) -> str:
    return "–" if lo is None and hi is None else f"{_fmt(lo)} – {_fmt(hi)}"


def print_summary(summary: dict[str, Any]) -> None:
    """Rich tables of the segmentation summary and lesion sensitivity by size."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Segmentation ({summary.get('n_cases', '?')} cases)")
    for col in ("class", "metric", "mean", "95% CI", "n"):
        table.add_column(col, justify="left" if col in ("class", "metric") else "right")
    for cls, metrics in summary.get("segmentation", {}).items():
        for name, s in metrics.items():
            lo, hi = s["ci"]
            table.add_row(cls, name, _fmt(s["mean"]), _ci(lo, hi), str(s["n"]))
    console.print(table)
    lesions = summary.get("lesion_detection") or {}
    if lesions.get("bins"):
        lt = Table(title="Lesion detection (equivalent diameter)")
        for col in ("size", "lesions", "detected", "sensitivity", "95% CI"):
            lt.add_column(col, justify="left" if col == "size" else "right")
        for b in lesions["bins"] + [dict(lesions["overall"], label="all sizes")]:
            lo, hi = b["ci"]
            lt.add_row(b["label"], str(b["n_lesions"]), str(b["n_detected"]), _fmt(b["sensitivity"]), _ci(lo, hi))
        console.print(lt)
        fp = lesions["false_positives_per_case"]
        console.print(f"False-positive components per case: {_fmt(fp['mean'])} "
                      f"(95% CI {_fmt(fp['ci'][0])} – {_fmt(fp['ci'][1])})")


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to the aemia app."""

    @app.command("evaluate", help=HELP)
    def evaluate(
        pred: Path = typer.Option(..., "--pred", help="Folder of predicted masks (PNG, NIfTI, NRRD, ...)."),
        gt: Path = typer.Option(..., "--gt", help="Folder of ground-truth masks with the same case names."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: PRED/../evaluation).", callback=v.out_folder),
        images: Optional[Path] = typer.Option(None, "--images", help="Folder of the images, for overlay figures.", callback=v.existing),
        nsd_tolerance: float = typer.Option(1.0, "--nsd-tolerance", help="NSD tolerance in mm.", callback=v.non_negative),
        classes: Optional[str] = typer.Option(None, "--classes", help="Labels to score, e.g. '1=liver,2=spleen' "
                                              "(default: every nonzero label found)."),
        n_bootstrap: int = typer.Option(1000, "--n-bootstrap", help="Bootstrap resamples for the 95% CIs.", callback=v.at_least_one),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap.", callback=v.non_negative),
    ) -> None:
        from aemia.evaluate.evaluate import evaluate_folders

        if nsd_tolerance < 0 or not math.isfinite(nsd_tolerance):
            raise InputError(None, f"--nsd-tolerance must be a finite number >= 0, got {nsd_tolerance}")
        if n_bootstrap < 1:
            raise InputError(None, f"--n-bootstrap must be >= 1, got {n_bootstrap}")
        wanted = parse_classes(classes)
        from aemia.data.preflight import mask_pairs, require
        from aemia.evaluate.evaluate import find_cases

        gt_cases, pred_cases = find_cases(gt), find_cases(pred)
        require(mask_pairs((pred_cases[c], g) for c, g in gt_cases.items() if c in pred_cases), pred)
        out_dir = out if out is not None else pred.resolve().parent / "evaluation"
        summary = evaluate_folders(pred, gt, out_dir, classes=wanted, nsd_tolerance_mm=nsd_tolerance,
                                   image_dir=images, n_resamples=n_bootstrap, seed=seed)
        print_summary(summary)
        typer.echo(f"Report: {summary['outputs']['report_html']}")
