"""The demo's extra stages, added to its report: synthetic liver tumors and a short active-learning run.

* **Synthetic tumors** (Hu et al., CVPR 2023; :mod:`aemia.synth.tumor`): tumors written into the bundled real CT's
  healthy liver (TotalSegmentator example CT, liver label 5) with ``aemia synth tumors``'s library form; the
  montage of axial slices through each tumor goes into the report. About 5 s.
* **Active learning** (ACFT, Zhou et al. CVPR 2017 / MedIA 2021; :mod:`aemia.active.simulate`): ACFT vs random
  selection on Kvasir-SEG at 64 px with a simulated annotator, a small budget (``initial`` + ``rounds`` ×
  ``per_round`` labels from a fixed 200-image pool, 50 test images, one seed), continual fine-tuning on all labels
  so far; the learning curve goes into the report. About 1–2 minutes on 2 cores. One seed on 50 test images is a
  demonstration of the loop, not evidence: ``benchmarks/active_learning.py`` measures the savings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aemia.cli.common import console


def synth_stage(run_dir: Path, n: int = 2, seed: int = 0) -> tuple[dict[str, Any], list[Path]]:
    from aemia.cli.synth import write_synthetic_tumors
    from aemia.data.catalog import get_dataset

    ds = get_dataset("totalseg_ct")
    case = ds.splits["train"][0]
    out = run_dir / "synthetic_tumors"
    res = write_synthetic_tumors(case.images[0], case.label, out, organ_label=5, n=n, tumor_type="random", seed=seed,
                                 overwrite=True)
    pngs = sorted(Path(out).rglob("*.png"))
    tumors = res.get("tumors", [])
    n_t = len(tumors) if isinstance(tumors, list) else int(tumors)
    console.print(f"[bold]synthetic tumors[/]: {res.get('cases', n)} CT(s) with {n_t} synthetic liver tumors "
                  f"(no tumor annotation) → {out}")
    from aemia.evaluate.report import Figure

    figs = [Figure(p, f"Synthetic liver tumors (no tumor annotation) in the bundled real CT: axial slices through each "
                      f"tumor ({p.stem})") for p in pngs]
    return {"synthetic_tumors": {"ct": case.id, "cases": n, "tumors": n_t, "folder": str(out)}}, figs


def active_stage(run_dir: Path, rounds: int = 4, per_round: int = 10, initial: int = 10, seed: int = 0,
                 device: str = "auto") -> tuple[dict[str, Any], list[Path]]:
    from aemia.active.curves import plot_curves
    from aemia.active.sim_training import SimulationConfig
    from aemia.active.simulate import simulate

    out = run_dir / "active_learning"
    cfg = SimulationConfig(dataset="kvasir", initial=initial, per_round=per_round, rounds=rounds, mode="all-labelled",
                           epochs_per_round=8, min_steps=60, size=64, features=(8, 16, 32, 64), pool_limit=200,
                           test_limit=50, device=device)
    console.print(f"[bold]active learning[/]: ACFT vs random on Kvasir-SEG (64 px, simulated annotator, "
                  f"{initial} + {rounds} x {per_round} labels, continual fine-tuning)")
    res = simulate("kvasir", ["random", "acft"], seeds=[seed], out_dir=out, config=cfg, plot=False,
                   log=lambda m: console.print("  " + m))
    png = plot_curves(res, out / "active_learning_curve.png",
                      title="Kvasir-SEG test Dice vs labels (demo budget, 1 seed)")
    final = {s: c["points"][-1] for s, c in res["strategies"].items() if c["points"]}
    summary = {s: {"n_labels": p["n_labels"], "dice": p["mean"], "ci": p["ci"]} for s, p in final.items()}
    console.print("  final: " + ", ".join(f"{s} Dice {v['dice']:.3f} at {v['n_labels']} labels" for s, v in summary.items()))
    from aemia.evaluate.report import Figure

    fig = Figure(png, "Active learning on Kvasir-SEG (demo budget: 1 seed, 50 test images): test Dice vs number of "
                      "labels, ACFT vs random selection, 95% CI bands")
    return {"active_learning": {"final": summary, "settings": {"initial": initial, "per_round": per_round,
                                                               "rounds": rounds, "pool": 200, "test": 50,
                                                               "seed": seed}}}, [fig]


def demo_extras(base: Callable[[Path, list[Any]], tuple[dict[str, Any], list[Any]]] | None, synth: bool,
                active: bool, device: str) -> Callable[[Path, list[Any]], tuple[dict[str, Any], list[Any]]]:
    """The report extras of the demo: ``base`` (pruning) plus the synthetic-tumor and active-learning stages."""

    def extras(run_dir: Path, cases: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        metrics, figures = base(run_dir, cases) if base is not None else ({}, [])
        metrics, figures = dict(metrics), list(figures)
        for enabled, stage in ((synth, lambda: synth_stage(Path(run_dir))),
                               (active, lambda: active_stage(Path(run_dir), device=device))):
            if enabled:
                m, f = stage()
                metrics.update(m)
                figures.extend(f)
        return metrics, figures

    return extras
