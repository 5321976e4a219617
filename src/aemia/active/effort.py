"""The human-effort report of a project (``aemia active status`` and the review app): labels per round, the
seconds people spent and the pixels/voxels they changed per case, and model quality against human seconds.

AbdomenAtlas-8K (Qu et al., NeurIPS 2023 Datasets & Benchmarks; ``reference/METHODS.md`` §5.2) argues by human
effort (time, edited voxels), not label count, so the learning curve is also drawn against the cumulative
seconds of the labels each model was trained on (``P/effort_curve.png/.csv``). Seconds and changed pixels come
from the ledger's ``efforts`` rows (:mod:`aemia.active.ledger_effort`), written by the review app; labels
imported from files have no timing and are counted as ``untimed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aemia.active.project import Project, open_project
from aemia.utils.io import save_figure

__all__ = ["effort_report", "plot_effort_curve"]


def effort_report(project: str | Path | Project) -> dict[str, Any]:
    """``{"rounds": [...], "cases": [...], "curve": [...], "total_seconds", "total_changed", "n_timed"}``."""
    proj = open_project(project)
    with proj.ledger() as led:
        items = {it.case_id: it for it in led.items()}
        per_case = led.case_efforts()
        totals: dict[str, int] = {}
        for e in led.efforts():
            if e.total_pixels is not None:
                totals[e.case_id] = e.total_pixels
    cases = [{"case": c, "round": items[c].round, "state": e.state, "annotator": e.annotator,
              "seconds": round(e.seconds, 1), "changed_pixels": e.changed_pixels,
              "total_pixels": totals.get(c), "saves": e.n_saves}
             for c, e in sorted(per_case.items()) if e.n_saves or items[c].status == "annotated"]
    rounds: dict[int, dict[str, Any]] = {}
    for it in items.values():
        if it.round is None:
            continue
        r = rounds.setdefault(it.round, {"round": it.round, "queried": 0, "labels": 0, "seconds": 0.0,
                                         "changed_pixels": 0, "untimed": 0})
        r["queried"] += 1
        e = per_case[it.case_id]
        if it.status == "annotated":
            r["labels"] += 1
            r["untimed"] += int(e.n_saves == 0)
        r["seconds"] = round(r["seconds"] + e.seconds, 1)
        r["changed_pixels"] += e.changed_pixels
    curve = []
    for s in proj.model_summaries():
        v = s.get("validation") or {}
        trained = s.get("trained_on") or []
        curve.append({"round": s["round"], "n_train_labels": s.get("n_train_labels", len(trained)),
                      "human_seconds": round(sum(per_case[c].seconds for c in trained if c in per_case), 1),
                      "untimed_labels": sum(1 for c in trained if c in per_case and per_case[c].n_saves == 0),
                      "metric": v.get("metric"), "value": v.get("value")})
    return {"rounds": [rounds[k] for k in sorted(rounds)], "cases": cases, "curve": curve,
            "total_seconds": round(sum(e.seconds for e in per_case.values()), 1),
            "total_changed": sum(e.changed_pixels for e in per_case.values()),
            "n_timed": sum(1 for e in per_case.values() if e.n_saves)}


def plot_effort_curve(curve: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Validation metric against cumulative human seconds; None (nothing written) without a timed point."""
    pts = [r for r in curve if r["value"] is not None and r["human_seconds"] > 0]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.plot([r["human_seconds"] / 60 for r in pts], [r["value"] for r in pts], "o-", color="tab:green")
    for r in pts:
        ax.annotate(f"r{r['round']}", (r["human_seconds"] / 60, r["value"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel("human minutes spent on the training labels (review app)")
    ax.set_ylabel(f"validation {pts[0]['metric']}")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
