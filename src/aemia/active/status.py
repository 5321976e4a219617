"""``status``: counts per status, the query rounds, the trained models and the learning curve
(``P/learning_curve.png/.csv``: validation metric vs number of training labels; the active-learning cycle, :mod:`aemia.cli.active`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aemia.active.effort import effort_report, plot_effort_curve
from aemia.active.project import Project, open_project
from aemia.utils.io import save_figure, write_text_atomic

__all__ = [
    "decision_line",
    "learning_curve",
    "project_status",
]


def learning_curve(project: str | Path | Project) -> list[dict[str, Any]]:
    """One row per trained round: round, mode, labels, training labels, validation metric, the promotion
    score with its 95% CI, whether the round was promoted and which round is then the project model."""
    proj = open_project(project)
    rows = []
    for s in proj.model_summaries():
        v = s.get("validation") or {}
        sc = v.get("score") or {}
        ci = sc.get("ci") or [None, None]
        rows.append({"round": s["round"], "mode": s["mode"], "n_labels": s["n_labels"],
                     "n_train_labels": s["n_train_labels"], "n_trained_on": len(s["trained_on"]),
                     "n_validation": s["n_validation"], "metric": v.get("metric"), "value": v.get("value"),
                     "accuracy": v.get("accuracy"), "score_metric": sc.get("metric"), "score": sc.get("mean"),
                     "score_ci_lo": ci[0], "score_ci_hi": ci[1], "promoted": s.get("promoted", True),
                     "project_model": s.get("project_model", s["round"])})
    return rows


def decision_line(summary: dict[str, Any]) -> str:
    """One line saying whether a round's model became the project's model, and why."""
    r = summary["round"]
    d = summary.get("decision") or {}
    sc = (summary.get("validation") or {}).get("score") or {}
    score = (f"validation {sc['metric']} {sc['mean']:.3f} (95% CI {sc['ci'][0]:.3f}-{sc['ci'][1]:.3f}, "
             f"n = {sc['n']})" if sc else "no validation score")
    if summary.get("promoted", True):
        why = f"; {d['reason']}" if d.get("reason") else ""
        return f"round {r:02d}: promoted, now the project model: {score}{why}"
    return (f"round {r:02d}: NOT promoted, the project model stays round {summary['project_model']:02d}: "
            f"{score}; {d.get('reason', '')}")


def _plot_curve(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["value"] is not None]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    xs, ys = [r["n_train_labels"] for r in pts], [r["value"] for r in pts]
    ax.plot(xs, ys, "o-", color="tab:blue")
    rejected = [r for r in pts if not r.get("promoted", True)]
    if rejected:  # rounds whose model did not become the project model
        ax.plot([r["n_train_labels"] for r in rejected], [r["value"] for r in rejected], "x", color="tab:red",
                markersize=9, label="not promoted")
        ax.legend(fontsize=8)
    for r in pts:
        ax.annotate(f"r{r['round']}", (r["n_train_labels"], r["value"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    metric = pts[0]["metric"] if pts else "metric"
    ax.set_xlabel("annotated training cases")
    ax.set_ylabel(f"validation {metric} (n = {pts[-1]['n_validation'] if pts else 0})")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def project_status(project: str | Path | Project, *, plot: bool = True) -> dict[str, Any]:
    """Counts per status, the query rounds, the trained models, the learning curve, the human-effort report
    (``"effort"``, :func:`aemia.active.effort.effort_report`; ``"effort_png"`` its quality-vs-seconds plot) and one
    :func:`decision_line` per trained round (``"decisions"``; ``"project_model"`` is the current one).

    With ``plot``, writes ``learning_curve.png`` and ``learning_curve.csv`` when at least one model has a
    validation score (a held-out validation set exists); ``"curve_png"`` is then its path, else ``None``
    and ``"note"`` says why.
    """
    proj = open_project(project)
    with proj.ledger() as led:
        counts = led.status_counts()
        rounds = [asdict(ri) for ri in led.rounds()]
    rows = learning_curve(proj)
    png: Path | None = None
    note = None
    if not rows:
        note = "no model trained yet (aemia active train)"
    elif not any(r["value"] is not None for r in rows):
        note = "no validation score yet (the validation set is empty or has a single class)"
    elif plot:
        png = proj.root / "learning_curve.png"
        _plot_curve(rows, png, f"{proj.root.name}: {proj.config.task}")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(proj.root / "learning_curve.csv", buf.getvalue())
    effort = effort_report(proj)
    effort_png = plot_effort_curve(effort["curve"], proj.root / "effort_curve.png",
                                   f"{proj.root.name}: quality vs human time") if plot else None
    current = proj.project_model()
    return {"effort": effort, "effort_png": effort_png, "project": str(proj.root), "task": proj.config.task, "counts": counts, "rounds": rounds,
            "curve": rows, "curve_png": png, "note": note,
            "decisions": [decision_line(s) for s in proj.model_summaries()],
            "project_model": None if current is None else current["round"]}
