"""Benchmark part: does the unlabelled rest of the training split help? Supervised only vs mean teacher vs
pseudo-labels at 5% and 10% of the training labels.

* Kvasir-SEG: UNet++ (``cpu`` preset widths, deep supervision), trained at 128 px, batch 8, Adam 2e-3 cosine
  (the ``kvasir_supervised`` recipe); test Dice on the 100 test images (evaluated as every run is: at native
  size with the best-validation checkpoint).
* PneumoniaMNIST: ResNet (``cpu`` preset widths) at 28 px, batch 16, Adam 1e-3 cosine; test AUC on the 624 test
  images.

Within a data set and label fraction the three arms share everything (labelled subset, recipe, seed, number of
epochs); the semi arms use the run defaults of :mod:`aemia.semisup` (mean teacher: weight 10 classification /
0.1 segmentation, EMA 0.99, evaluated with the teacher; pseudo-labels: weight 1, threshold 0.95 classification /
0.9 segmentation, class-frequency weights), ramped up over 30% of the epochs. Kvasir also has the arm
``mean_teacher_w10``: mean teacher with the classification weight 10 (the earlier segmentation default, kept as
the ablation that motivated the change). Fewer labelled images give fewer steps per epoch, so the 5% runs get
more epochs than the 10% runs (``EPOCHS``), the same for every arm.

Teacher batch norm: the committed ``semi`` figures were measured with the teacher keeping the running statistics
of its own passes over noisy unlabelled images (``teacher_bn="own"``, the paper's code); ``semi_long`` and any
new run use the default ``teacher_bn="clean"`` (``benchmarks/semi_mt_diagnosis.py`` for why).

Aggregation: ``dice`` / ``auc`` = the mean over seeds of each seed's test metric; ``ci`` = 95% percentile
bootstrap over *test cases* (1000 resamples; each resample draws the same cases for every seed and recomputes
the seed-averaged metric), so it is the test-set uncertainty of the seed average; ``per_seed`` the per-seed
values and ``seed_sd`` their spread (None with one seed).

Budget (full mode, 2 cores, one seed): about 35 minutes (``EPOCHS``; a mean-teacher or pseudo-label step costs
about twice a supervised step). Runs live in ``work/semi/<data set>_<fraction>_<arm>_s<seed>`` and finished
runs are reused; an interrupted run resumes from its last checkpoint. ``quick=True``: 32 px Kvasir, tiny
widths, 1 epoch, in ``work/semi_quick`` (a smoke test of the whole pipeline, not a measurement).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from aemia.evaluate import metrics as M  # noqa: E402
import aemia.semisup  # noqa: E402,F401 - registers the semi methods' implementations
from aemia.recipes.run import train_run  # noqa: E402
from aemia.runs import RunConfig  # noqa: E402
from aemia.train.trainer import TrainConfig  # noqa: E402

#: arm -> (semi method, weight; None = the run default)
ARMS: dict[str, tuple[str | None, float | None]] = {
    "supervised": (None, None), "mean_teacher": ("mean-teacher", None), "pseudo_label": ("pseudo-label", None)}
EXTRA_ARMS = {"kvasir": {"mean_teacher_w10": ("mean-teacher", 10.0)}}
FRACTIONS = (0.05, 0.1)
#: epochs per (data set, label fraction), equal for the three arms (full mode)
EPOCHS = {("kvasir", 0.05): 24, ("kvasir", 0.1): 14, ("pneumoniamnist", 0.05): 12, ("pneumoniamnist", 0.1): 8}
#: the longer schedule (``run_long``): the kvasir_supervised / ssl_label_efficiency budget of 600 optimiser steps
#: (80 labelled images = 10 steps per epoch). The short schedule above gives Kvasir 120-140 steps, about the
#: horizon of the teacher's EMA (decay 0.99 averages over ~100 steps), so the teacher evaluated at the end
#: still carries the first epochs' weights.
LONG_EPOCHS = {("kvasir", 0.1): 60}
N_BOOT = 1000


def _config(dataset: str, fraction: float, semi: str | None, seed: int, quick: bool,
            weight: float | None = None, epochs_table: dict | None = None) -> RunConfig:
    epochs = 1 if quick else (epochs_table or EPOCHS)[(dataset, fraction)]
    if dataset == "kvasir":
        return RunConfig(dataset="kvasir", model="unetpp", preset="tiny" if quick else "cpu",
                         size=32 if quick else 128, label_fraction=fraction, semi=semi, semi_weight=weight,
                         train=TrainConfig(epochs=epochs, batch_size=8, lr=2e-3, seed=seed, progress=False))
    return RunConfig(dataset="pneumoniamnist", model="resnet", preset="tiny" if quick else "cpu",
                     label_fraction=fraction, semi=semi, semi_weight=weight,
                     train=TrainConfig(epochs=epochs, batch_size=16, lr=1e-3, seed=seed, progress=False))


def _train(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate, or reuse a finished run; resume an interrupted one."""
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text())
    resume = (run_dir / "checkpoints" / "last.safetensors").exists()
    print(f"== {run_dir.name}{' (resuming)' if resume else ''}", flush=True)
    return train_run(cfg, run_dir, resume=resume)


def _per_case(run_dir: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Kvasir: per-case Dice (and None). PneumoniaMNIST: the pneumonia probability and the targets."""
    with open(run_dir / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    if "polyp_dice" in rows[0]:
        return np.array([float(r["polyp_dice"]) for r in rows]), None
    score = next(k for k in rows[0] if k.startswith("p_") and k != "p_normal")
    return np.array([float(r[score]) for r in rows]), np.array([int(r["target"]) for r in rows])


def _aggregate(run_dirs: list[Path], metric: str) -> dict[str, Any]:
    """Mean over seeds + test-case bootstrap CI of the seed-averaged metric (module docstring)."""
    cols = [_per_case(d) for d in run_dirs]
    values = np.stack([c[0] for c in cols])  # (seeds, cases)
    targets = cols[0][1]

    def stat(idx: np.ndarray) -> float:
        if targets is None:
            return float(values[:, idx].mean())
        y = targets[idx]
        if np.unique(y).size < 2:
            return math.nan
        return float(np.mean([M.auc(y, v[idx]) for v in values]))

    n = values.shape[1]
    per_seed = [float(v.mean()) if targets is None else float(M.auc(targets, v)) for v in values]
    rng = np.random.default_rng(0)
    boot = np.array([stat(rng.integers(0, n, n)) for _ in range(N_BOOT)])
    boot = boot[np.isfinite(boot)]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {metric: float(np.mean(per_seed)), "ci": [float(lo), float(hi)], "per_seed": per_seed,
            "seed_sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None,
            "ci_method": "95% percentile bootstrap over test cases of the seed-averaged metric", "n_test": int(n)}


def _semi_log(run_dir: Path) -> dict[str, Any]:
    """The last epoch's unlabelled-term entries and the training time (for the record)."""
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    last = log[-1] if log else {}
    out = {k: last[k] for k in ("semi_loss", "semi_weight", "semi_accepted") if k in last}
    out["train_seconds"] = round(sum(h.get("seconds", 0.0) for h in log), 1)
    return out


def run(quick: bool, seeds: list[int], work: Path) -> dict:
    """``{"kvasir": {"0.05": {"supervised": {"dice", "ci", "per_seed", ...}, "mean_teacher": ..., "pseudo_label":
    ...}, "0.1": ...}, "pneumoniamnist": {... "auc" ...}, "recipe": ...}``; see the module docstring."""
    work = Path(work) / ("semi_quick" if quick else "semi")
    started = time.perf_counter()
    out: dict[str, Any] = {}
    for dataset, metric in (("kvasir", "dice"), ("pneumoniamnist", "auc")):
        out[dataset] = {}
        for fraction in FRACTIONS:
            res: dict[str, Any] = {}
            arms = {**ARMS, **EXTRA_ARMS.get(dataset, {})}
            for arm, (semi, weight) in arms.items():
                dirs = []
                for seed in seeds:
                    run_dir = work / f"{dataset}_{fraction}_{arm}_s{seed}"
                    _train(_config(dataset, fraction, semi, seed, quick, weight), run_dir)
                    dirs.append(run_dir)
                res[arm] = {**_aggregate(dirs, metric), "epochs": _config(dataset, fraction, semi, 0, quick).train.epochs,
                            "last_epoch": [_semi_log(d) for d in dirs]}
            for arm in arms:
                if arm != "supervised":
                    res[f"{arm}_minus_supervised"] = res[arm][metric] - res["supervised"][metric]
            out[dataset][str(fraction)] = res
    out["recipe"] = {
        "kvasir": "UNet++ cpu preset (16,16,32,64,128), deep supervision, 128 px, batch 8, Adam 2e-3 cosine"
                  if not quick else "UNet++ tiny, 32 px, 1 epoch (quick)",
        "pneumoniamnist": "ResNet cpu preset (16,16,32,64,128), 28 px, batch 16, Adam 1e-3 cosine"
                          if not quick else "ResNet tiny, 1 epoch (quick)",
        "epochs": {f"{d}@{f}": (1 if quick else e) for (d, f), e in EPOCHS.items()},
        "semi": "aemia.semisup run defaults (mean teacher weight 0.1 segmentation / 10 classification; "
                "mean_teacher_w10 = weight 10 on Kvasir); one unlabelled batch (same size) per labelled batch",
        "seeds": list(seeds), "quick": quick, "work": str(work),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    return out


def run_long(quick: bool, seeds: list[int], work: Path) -> dict:
    """Kvasir at 10% labels with the longer schedule (``LONG_EPOCHS``: 600 steps), supervised vs mean teacher
    vs pseudo-labels, same aggregation as :func:`run`: ``{"kvasir": {"0.1": {...}}, "recipe": ...}``."""
    work = Path(work) / ("semi_long_quick" if quick else "semi_long")
    started = time.perf_counter()
    out: dict[str, Any] = {"kvasir": {}}
    for (dataset, fraction), epochs in LONG_EPOCHS.items():
        res: dict[str, Any] = {}
        for arm, (semi, weight) in ARMS.items():
            dirs = []
            for seed in seeds:
                run_dir = work / f"{dataset}_{fraction}_{arm}_s{seed}"
                _train(_config(dataset, fraction, semi, seed, quick, weight, LONG_EPOCHS), run_dir)
                dirs.append(run_dir)
            res[arm] = {**_aggregate(dirs, "dice"), "epochs": 1 if quick else epochs,
                        "last_epoch": [_semi_log(d) for d in dirs]}
        for arm in ARMS:
            if arm != "supervised":
                res[f"{arm}_minus_supervised"] = res[arm]["dice"] - res["supervised"]["dice"]
        out[dataset][str(fraction)] = res
    out["recipe"] = {"kvasir": "as in part 'semi', but epochs = LONG_EPOCHS (600 optimiser steps, the "
                               "kvasir_supervised budget)",
                     "teacher_bn": "clean (the evaluated EMA teacher's batch-norm statistics re-estimated on the "
                                   "labelled images; benchmarks/semi_mt_diagnosis.py measured the paper's 'own')", "epochs": {f"{d}@{f}": e for (d, f), e in LONG_EPOCHS.items()},
                     "seeds": list(seeds), "quick": quick, "work": str(work),
                     "wall_seconds": round(time.perf_counter() - started, 1)}
    return out


if __name__ == "__main__":  # pragma: no cover - manual smoke run
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = ap.parse_args()
    print(json.dumps(run(args.quick, [int(s) for s in args.seeds.split(",")], args.work), indent=1))


#: the training core's 2D recipe exactly as ``training_stability.py`` runs Kvasir (U-Net ``cpu`` widths, 128 px,
#: batch 8, Adam 2e-3 with warm-up and cosine, at least 3000 optimiser steps, fp32), so that benchmark's recorded
#: supervised seeds are this part's supervised arm, seed for seed (same labelled subset and initialisation)
NEW_CORE_MIN_STEPS = 3000
NEW_CORE_ARMS = ("mean_teacher",)


def _new_core_config(semi: str | None, seed: int, quick: bool) -> RunConfig:
    return RunConfig(dataset="kvasir", model="unet", preset="tiny" if quick else "cpu", size=32 if quick else 128,
                     label_fraction=0.1, semi=semi,
                     train=TrainConfig(epochs=1 if quick else 40, min_steps=0 if quick else NEW_CORE_MIN_STEPS,
                                       batch_size=8, lr=2e-3, amp="none", seed=seed, channels_last=False,
                                       progress=False))


def _recorded_supervised() -> tuple[dict[int, float], str]:
    """``training_stability.json``'s Kvasir 10% U-Net fp32 runs: seed -> test Dice, and where they come from."""
    path = ROOT / "benchmarks" / "results" / "training_stability.json"
    ts = json.loads(path.read_text()).get("kvasir", {}).get("0.1", {}) if path.exists() else {}
    if ts.get("model") != "unet" or ts.get("amp") != "none":
        return {}, ""
    return {int(r["seed"]): float(r["dice"]) for r in ts.get("runs", [])}, \
        f"benchmarks/results/training_stability.json kvasir[0.1] ({ts.get('note', '')})"


def run_new_core(quick: bool, seeds: list[int], work: Path) -> dict:
    """Kvasir at 10% labels with the training core's 3000-step recipe: the mean teacher against the supervised
    seeds recorded by ``training_stability.py`` (not re-trained here), paired seed for seed. ``{"kvasir": {"0.1":
    {"mean_teacher": {...}, "supervised_recorded": {seed: dice}, "mean_teacher_minus_supervised_per_seed": [...],
    "..._mean", "..._ci"}}, "recipe": ...}``; the CI of the paired difference is a bootstrap over seeds."""
    from aemia.evaluate.metrics import bootstrap_ci

    work = Path(work) / ("semi_new_core_quick" if quick else "semi_new_core")
    started = time.perf_counter()
    recorded, source = _recorded_supervised()
    res: dict[str, Any] = {"supervised_recorded": {str(s): d for s, d in recorded.items() if s in seeds},
                           "supervised_source": source}
    for arm in NEW_CORE_ARMS:
        semi, _ = ARMS[arm]
        dirs = []
        for seed in seeds:
            run_dir = work / f"kvasir_0.1_{arm}_s{seed}"
            _train(_new_core_config(semi, seed, quick), run_dir)
            dirs.append(run_dir)
        res[arm] = {**_aggregate(dirs, "dice"), "last_epoch": [_semi_log(d) for d in dirs]}
        diffs = [d - recorded[s] for s, d in zip(seeds, res[arm]["per_seed"]) if s in recorded and not quick]
        if diffs:
            ci = bootstrap_ci(np.asarray(diffs))
            res[f"{arm}_minus_supervised_per_seed"] = [round(d, 4) for d in diffs]
            res[f"{arm}_minus_supervised_mean"] = round(float(np.mean(diffs)), 4)
            res[f"{arm}_minus_supervised_ci"] = [round(ci.lo, 4), round(ci.hi, 4)]
    return {"kvasir": {"0.1": res},
            "recipe": {"kvasir": "the training core's 2D recipe (training_stability.py): U-Net cpu preset, 128 px, "
                                 f"batch 8, Adam 2e-3 warm-up + cosine, at least {NEW_CORE_MIN_STEPS} steps, fp32; "
                                 "semi run defaults (mean teacher weight 0.1, EMA 0.99, teacher_bn clean, ramp-up "
                                 "over 30% of the epochs that run)",
                       "pairing": "supervised arm = training_stability's recorded seeds (same recipe, labelled "
                                  "subset and initialisation); paired CI = bootstrap over seeds",
                       "seeds": list(seeds), "quick": quick, "work": str(work),
                       "wall_seconds": round(time.perf_counter() - started, 1)}}
