"""Benchmark part: SSAC (Xie, Zhang, Xia, MedIA 2019; :mod:`aemia.semisup.ssac`) vs the same classifier alone.

* PneumoniaMNIST at 5% of the training labels (236 of 4,708 images), 28 px; test AUC on the 624 test images.
* BUSI (normal / benign / malignant) at 10% of the training labels (55 of 546 images), 64 px; macro one-vs-rest
  test AUC on the 156 test images.

Per data set and seed, one :func:`~aemia.semisup.ssac.run_ssac` trains phase 1 (the adversarial autoencoder R
on every training image, labels unused) and then, on the labelled subset of that seed, SSAC (C + R's frozen
encoder through zero-initialised 1×1 transitions) and "C alone" with the same seed, batches, augmentation and
schedule; both are evaluated at their last epoch. Phase 1 sees the same images whatever the seed, so it is trained
once, in the first seed's run, and reused by the other seeds (``pretrained_aae``); the seeds differ in the
labelled subset, C's initialisation and the batches.

Recipe (CPU choices, :class:`~aemia.semisup.ssac.SSACConfig` defaults otherwise): ``RECIPES`` below.

Aggregation per model: ``auc`` = the mean over seeds of each seed's test AUC; ``ci`` = 95% percentile bootstrap
over *test cases* (1000 resamples, the same cases for every seed) of that seed average; ``per_seed`` each seed's
AUC with its own case-bootstrap CI; ``seed_sd`` the spread over seeds. ``delta`` = SSAC − C alone, the same way
(paired: both models on the same resampled cases).

Budget (full, 2 cores, seeds 0-2): about 12 minutes, most of it phase 1. Runs live in ``work/ssac/<data
set>_<fraction>_s<seed>``; finished runs are reused and an interrupted one is restarted. ``quick=True``: fewer
epochs, phase 1 on 1,000 unlabelled PneumoniaMNIST images, in ``work/ssac_quick`` (about 2 minutes; a smoke test
of the pipeline, not a measurement).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from aemia.evaluate import metrics as M  # noqa: E402
from aemia.semisup.ssac import SSACConfig, class_scores, run_ssac  # noqa: E402

FRACTIONS = {"pneumoniamnist": 0.05, "busi": 0.1}
#: per data set: SSACConfig overrides for the full and the quick mode
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "pneumoniamnist": {
        "full": {"epochs_aae": 8, "epochs_cls": 40, "batch_cls": 32},
        "quick": {"epochs_aae": 2, "epochs_cls": 10, "batch_cls": 32, "max_unlabelled": 1000, "n_boot": 200},
    },
    "busi": {
        "full": {"epochs_aae": 15, "epochs_cls": 50, "batch_cls": 16},
        "quick": {"epochs_aae": 3, "epochs_cls": 10, "batch_cls": 16, "n_boot": 200},
    },
}
MODELS = ("classifier", "ssac")
N_BOOT = 1000


def _config(dataset: str, seed: int, quick: bool, pretrained: Path | None) -> SSACConfig:
    over = dict(RECIPES[dataset]["quick" if quick else "full"])
    return SSACConfig(dataset=dataset, label_fraction=FRACTIONS[dataset], seed=seed, progress=False,
                      pretrained_aae=str(pretrained) if pretrained is not None else None, **over)


def _run(cfg: SSACConfig, run_dir: Path) -> dict[str, Any]:
    """A finished run's metrics, or train it (an interrupted run's folder is cleared first)."""
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"== ssac {run_dir.name}", flush=True)
    return run_ssac(cfg, run_dir)


def _probs(run_dir: Path, classes: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with open(run_dir / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    y = np.array([int(r["target"]) for r in rows])
    return y, {m: np.array([[float(r[f"{m}_p_{c}"]) for c in classes] for r in rows]) for m in MODELS}


def _aggregate(runs: list[tuple[int, Path, dict[str, Any]]], n_boot: int) -> dict[str, Any]:
    """Seed-averaged AUC per model and of the SSAC − C-alone difference, with test-case bootstrap CIs."""
    classes = runs[0][2]["classes"]
    cols = [_probs(d, classes) for _, d, _ in runs]
    y = cols[0][0]
    scores = {m: [class_scores(c[1][m]) for c in cols] for m in MODELS}

    out: dict[str, Any] = {}
    for model in MODELS:
        per_seed = [{"seed": seed, "auc": m[model]["auc"]["mean"], "ci": m[model]["auc"]["ci"],
                     "accuracy": m[model]["accuracy"]["mean"]} for seed, _, m in runs]
        aucs = [p["auc"] for p in per_seed]
        ci = M.seed_mean_metric_ci(y, scores[model], M.auc, n_resamples=n_boot, seed=0)
        out[model] = {"auc": float(np.mean(aucs)), "ci": [ci.lo, ci.hi],
                      "accuracy": float(np.mean([p["accuracy"] for p in per_seed])), "per_seed": per_seed,
                      "seed_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None}
    diffs = [m["delta_auc"]["mean"] for _, _, m in runs]
    delta = M.seed_mean_metric_ci(y, scores["ssac"], M.auc, n_resamples=n_boot, seed=0, minus=scores["classifier"])
    out["delta"] = {"auc": float(np.mean(diffs)), "ci": [delta.lo, delta.hi],
                    "per_seed": [{"seed": s, "auc": m["delta_auc"]["mean"], "ci": m["delta_auc"]["ci"]}
                                 for s, _, m in runs],
                    "what": "SSAC minus classifier alone (paired over test cases)"}
    first = runs[0][2]
    out["info"] = {"n_test": int(len(y)), "n_labelled": first["n_labelled"], "n_unlabelled": first["n_unlabelled"],
                   "aae": {k: first["aae"].get(k) for k in ("test_recon_mse", "z_std", "final_d_acc")},
                   "seconds": {f"s{seed}": round(m["seconds"]["total"], 1) for seed, _, m in runs}}
    return out


def run(quick: bool, seeds: list[int], work: Path) -> dict:
    """``{"pneumoniamnist": {"0.05": {"classifier": {"auc", "ci", "per_seed", ...}, "ssac": {...}, "delta":
    {...}, "info": {...}}}, "busi": {"0.1": {...}}, "recipe": {...}}``; see the module docstring."""
    t0 = time.monotonic()
    work = Path(work) / ("ssac_quick" if quick else "ssac")
    n_boot = 200 if quick else N_BOOT
    result: dict[str, Any] = {}
    for dataset, fraction in FRACTIONS.items():
        runs = []
        first: Path | None = None
        for seed in seeds:
            run_dir = work / f"{dataset}_{fraction:g}_s{seed}"
            cfg = _config(dataset, seed, quick, pretrained=None if first is None or quick else first)
            runs.append((seed, run_dir, _run(cfg, run_dir)))
            first = first or run_dir
        result[dataset] = {f"{fraction:g}": _aggregate(runs, n_boot)}
        a = result[dataset][f"{fraction:g}"]
        d = a["delta"]
        print(f"ssac {dataset} {fraction:g}: SSAC {a['ssac']['auc']:.3f} vs C alone {a['classifier']['auc']:.3f} "
              f"(delta {d['auc']:+.3f}, CI {d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})", flush=True)
    result["recipe"] = {
        "paper": "SSAC / MK-SSAC, Xie, Zhang, Xia, MedIA 2019 (reference/METHODS.md section 7.1)",
        "fractions": FRACTIONS, "seeds": list(seeds), "quick": quick,
        "configs": {d: RECIPES[d]["quick" if quick else "full"] for d in FRACTIONS},
        "defaults": {k: v for k, v in SSACConfig().__dict__.items() if k not in ("dataset", "progress")},
        "phase1_shared_across_seeds": not quick and len(seeds) > 1,
        "ci_method": "95% percentile bootstrap over test cases of the seed-averaged AUC",
        "seconds": round(time.monotonic() - t0, 1),
    }
    return result


if __name__ == "__main__":  # pragma: no cover - manual use
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    res = run(a.quick, [int(s) for s in a.seeds.split(",")], a.work)
    text = json.dumps(res, indent=2, default=lambda o: o if not isinstance(o, float) or math.isfinite(o) else None)
    if a.out:
        a.out.write_text(text + "\n")
    else:
        print(text)
