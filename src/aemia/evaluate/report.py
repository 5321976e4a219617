"""A standalone ``report.html``: summary tables with 95% CIs, learning curves and contour overlays.

Figures are written as PNG files under ``figures/`` next to the report and also embedded (base64) in the
HTML, so the report opens correctly on its own when e-mailed or moved.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aemia.utils.io import write_text_atomic, write_with

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.note{color:#666;font-size:.85rem}
figure{display:inline-block;margin:.5rem;vertical-align:top}figcaption{font-size:.85rem;text-align:center}
img{max-width:100%;border:1px solid #ddd}.scroll{max-height:480px;overflow:auto;display:inline-block}
"""

MAX_CASE_ROWS = 500


@dataclass(frozen=True)
class Figure:
    """A PNG to show in the report with its caption."""

    path: Path
    caption: str = ""


# --------------------------------------------------------------------------------------- figures


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def _display_image(image: np.ndarray | None, shape: tuple[int, ...]) -> tuple[np.ndarray, str | None]:
    if image is None:
        return np.zeros(shape, dtype=float), "gray"
    img = np.asarray(image, dtype=float)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3]
        hi = 255.0 if img.max() > 1.0 else 1.0
        return np.clip(img / hi, 0.0, 1.0), None
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    return np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0), "gray"


def overlay_figure(
    image2d: np.ndarray | None,
    gt2d: np.ndarray,
    pred2d: np.ndarray,
    title: str,
    path: str | Path,
) -> Path:
    """Save a PNG of ``image2d`` ((H, W) grey or (H, W, 3) RGB; None → black) with the ground-truth
    contour in green and the prediction contour in red. Returns ``path``."""
    plt = _pyplot()
    gt2d, pred2d = np.asarray(gt2d) != 0, np.asarray(pred2d) != 0
    shown, cmap = _display_image(image2d, gt2d.shape)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(shown, cmap=cmap, interpolation="nearest")
    for mask, colour in ((gt2d, "lime"), (pred2d, "red")):
        if mask.any() and not mask.all():
            ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    ax.plot([], [], color="lime", label="ground truth")
    ax.plot([], [], color="red", label="prediction")
    ax.legend(loc="lower right", fontsize=7, framealpha=0.6)
    return _save(fig, Path(path))


def select_slice(
    image: np.ndarray | None, gt: np.ndarray, pred: np.ndarray, axis: int = -1
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, int]:
    """For 3D arrays pick the slice along ``axis`` (default last = axial in NIfTI voxel order) with the most
    gt foreground (else most predicted foreground, else the middle one); returns (image, gt, pred, index).

    ``image`` may carry a trailing RGB axis or be None. Slices are rotated 90° for display.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    axis = axis % gt.ndim
    other = tuple(a for a in range(gt.ndim) if a != axis)
    counts = (gt != 0).sum(axis=other)
    if counts.max() == 0:
        counts = (pred != 0).sum(axis=other)
    index = int(np.argmax(counts)) if counts.max() > 0 else gt.shape[axis] // 2

    def take(a: np.ndarray) -> np.ndarray:
        return np.rot90(np.take(a, index, axis=axis))

    img = None if image is None else take(np.asarray(image))
    return img, take(gt), take(pred), index


def learning_curve_figure(curves: dict[str, Sequence[float]], path: str | Path) -> Path:
    """Plot every series in ``curves`` against ``epoch``/``step`` (or the index); losses on the left panel,
    other metrics on the right."""
    plt = _pyplot()
    x_key = next((k for k in ("epoch", "step", "iteration") if k in curves), None)
    series = {k: v for k, v in curves.items() if k != x_key and len(v)}
    losses = {k: v for k, v in series.items() if "loss" in k.lower()}
    others = {k: v for k, v in series.items() if k not in losses}
    groups = [g for g in (losses, others) if g]
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 3.5), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for name, ys in group.items():
            xs = list(curves[x_key])[: len(ys)] if x_key else list(range(1, len(ys) + 1))
            ax.plot(xs, list(ys)[: len(xs)], marker="." if len(ys) < 50 else None, label=name)
        ax.set_xlabel(x_key or "index")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


# ------------------------------------------------------------------------------------------- HTML


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return html.escape(str(v))


def _ci(lo: Any, hi: Any) -> str:
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in (lo, hi)]
    return "–" if all(missing) else f"{_fmt(lo)} – {_fmt(hi)}"


def _is_stat(d: Any) -> bool:
    return isinstance(d, dict) and "mean" in d and "ci" in d


def _stat_cells(s: dict[str, Any]) -> str:
    lo, hi = (s.get("ci") or [math.nan, math.nan])[:2]
    n = s.get("n", "")
    return f"<td>{_fmt(s['mean'])}</td><td>{_ci(lo, hi)}</td><td>{_fmt(n)}</td>"


def summary_table(summary: dict[str, Any]) -> str:
    """HTML table for ``{group: {metric: stat}}`` or ``{metric: stat}`` where stat = {"mean", "ci", "n"}."""
    rows = []
    for key, value in summary.items():
        if _is_stat(value):
            rows.append(f"<tr><td class=l></td><td class=l>{_fmt(key)}</td>{_stat_cells(value)}</tr>")
        elif isinstance(value, dict):
            for metric, stat in value.items():
                if _is_stat(stat):
                    rows.append(f"<tr><td class=l>{_fmt(key)}</td><td class=l>{_fmt(metric)}</td>{_stat_cells(stat)}</tr>")
    if not rows:
        return ""
    head = "<tr><th class=l>class</th><th class=l>metric</th><th>mean</th><th>95% CI</th><th>n</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def lesion_table(lesions: dict[str, Any]) -> str:
    """HTML table of lesion sensitivity by size bin (``metrics["lesion_detection"]``)."""
    rows = []
    for b in lesions.get("bins", []) + [dict(lesions.get("overall", {}), label="all sizes")]:
        if "n_lesions" not in b:
            continue
        lo, hi = (b.get("ci") or [math.nan, math.nan])[:2]
        rows.append(f"<tr><td class=l>{_fmt(b['label'])}</td><td>{_fmt(b['n_lesions'])}</td>"
                    f"<td>{_fmt(b['n_detected'])}</td><td>{_fmt(b['sensitivity'])}</td>"
                    f"<td>{_ci(lo, hi)}</td></tr>")
    head = ("<tr><th class=l>equivalent diameter</th><th>lesions</th><th>detected</th>"
            "<th>sensitivity</th><th>95% CI</th></tr>")
    out = f"<table>{head}{''.join(rows)}</table>" if rows else ""
    fp = lesions.get("false_positives_per_case")
    if _is_stat(fp):
        lo, hi = fp["ci"]
        out += (f"<p>False-positive predicted components per case: {_fmt(fp['mean'])} "
                f"(95% CI {_fmt(lo)} – {_fmt(hi)}, n = {_fmt(fp['n'])})</p>")
    return out


def case_table(rows: list[dict[str, Any]], limit: int = MAX_CASE_ROWS) -> str:
    """HTML table of per-case rows (first ``limit`` rows; the CSV has them all)."""
    if not rows:
        return "<p class=note>No cases.</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th{' class=l' if i == 0 else ''}>{_fmt(c)}</th>" for i, c in enumerate(cols))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=l' if i == 0 else ''}>{_fmt(r.get(c, ''))}</td>" for i, c in enumerate(cols)) + "</tr>"
        for r in rows[:limit]
    )
    more = f"<p class=note>Showing {limit} of {len(rows)} cases; see per_case.csv.</p>" if len(rows) > limit else ""
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>{more}"


def _embed(fig: Figure) -> str:
    data = base64.b64encode(Path(fig.path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(fig.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>")


def _as_figure(item: Any) -> Figure:
    if isinstance(item, Figure):
        return item
    if isinstance(item, dict):
        return Figure(Path(item["path"]), str(item.get("caption", "")))
    if isinstance(item, (tuple, list)):
        return Figure(Path(item[0]), str(item[1]) if len(item) > 1 else "")
    return Figure(Path(item))


def write_report(
    run_or_out_dir: str | Path,
    metrics: dict[str, Any],
    per_case_rows: list[dict[str, Any]],
    overlays: list[Figure | dict[str, Any] | tuple[Any, ...] | str | Path] | None = None,
    curves: dict[str, Sequence[float]] | None = None,
    title: str = "aemia evaluation",
) -> Path:
    """Write ``report.html`` into ``run_or_out_dir`` and return its path.

    ``metrics`` may hold ``"segmentation"`` ({class: {metric: {"mean", "ci", "n"}}}), ``"lesion_detection"``
    (bins with counts/sensitivity/ci), ``"classification"`` ({metric: {"mean", "ci", "n"}}) and any scalar
    fields (shown as "details"). ``overlays`` are PNGs (e.g. from :func:`overlay_figure`) as
    :class:`Figure`, ``(path, caption)`` or ``{"path", "caption"}``. ``curves`` adds a learning-curve figure.
    """
    out = Path(run_or_out_dir)
    figures_dir = out / "figures"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class=note>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by aemia. "
             "Intervals are 95% case-level percentile bootstrap CIs.</p>"]

    scalar = (str, int, float, bool, type(None))
    details = {k: v for k, v in metrics.items() if isinstance(v, scalar)}
    for key, value in metrics.items():  # small nested records (e.g. the run's recipe) read as details too
        if isinstance(value, dict) and value and all(isinstance(v, scalar) for v in value.values()):
            details.update({f"{key}: {k}": v for k, v in value.items()})
    if details:
        parts.append("<h2>Details</h2><table>" + "".join(
            f"<tr><th class=l>{_fmt(k)}</th><td class=l>{_fmt(v)}</td></tr>" for k, v in details.items()) + "</table>")
    if metrics.get("segmentation"):
        parts += ["<h2>Segmentation</h2>", summary_table(metrics["segmentation"]),
                  "<p class=note>hd95 in mm; when exactly one of prediction/ground truth is empty hd95 is the "
                  "image diagonal (hd95_worst_case = share of such cases). nsd = normalised surface Dice.</p>"]
    if metrics.get("lesion_detection"):
        parts += ["<h2>Lesion detection</h2>", lesion_table(metrics["lesion_detection"])]
    if metrics.get("classification"):
        parts += ["<h2>Classification</h2>", summary_table(metrics["classification"])]
    for key, value in metrics.items():  # lists of flat records (e.g. the pruning table) become tables
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value) and key not in (
                "worst_cases", "best_cases"):
            parts += [f"<h2>{html.escape(key.replace('_', ' ').capitalize())}</h2>", case_table(value)]
    if curves:
        path = learning_curve_figure(curves, figures_dir / "learning_curves.png")
        parts += ["<h2>Learning curves</h2>", _embed(Figure(path, "learning curves"))]
    if overlays:
        parts += ["<h2>Best and worst cases</h2>",
                  "<p class=note>Ground truth in green, prediction in red.</p>"]
        parts += [_embed(_as_figure(o)) for o in overlays]
    parts += ["<h2>Per case</h2>", case_table(per_case_rows)]

    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    path = out / "report.html"
    write_text_atomic(path, page)
    return path
