"""Benchmark: Kvasir-SEG test Dice (95% CI) of U-Net and UNet++ at 10/25/50/100% of the training labels.

Recipe (same for both networks; ``aemia train`` defaults otherwise):
* data: the catalog's fixed seeded Kvasir split (798 train / 100 val / 100 test); the labelled subset at
  fraction f is the first ceil(f·798) cases of a seeded permutation (nested: 10% ⊂ 25% ⊂ 50% ⊂ 100%);
* network: CPU preset widths (16, 16, 32, 64, 128); UNet++ with deep supervision (equal head weights);
* training at 128x128 px (CPU budget), Adam lr 2e-3, cosine schedule, batch 8, bf16 autocast + channels-last,
  ``--epochs`` epochs (default 40) but at least ``--min-steps`` optimiser steps (default 600) so the smallest
  subsets are not starved (the epoch count used per run is recorded); best checkpoint on validation Dice;
* evaluation: fp32, predictions upsampled to the native 256x256 grid, Dice per test case, case-level bootstrap
  95% CI (1000 resamples, seed 0).

Fast-mode check: UNet++ at 10% labels is also trained in fp32 without channels-last (``amp=none``) and the
two test Dice values are compared, so "Dice unchanged by the fast mode" is a measured statement.

Runs are resumable: each run lives in ``benchmarks/work/kvasir_supervised/<model>_<fraction>`` and a finished
run (metrics.json present) is reused; an interrupted one resumes from its last checkpoint.

    .venv/bin/python benchmarks/kvasir_supervised.py                 # full benchmark (about 1-1.5 h on 2 cores)
    .venv/bin/python benchmarks/kvasir_supervised.py --epochs 2 --min-steps 0 --fractions 0.1 --out /tmp/k.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from aemia.recipes.run import train_run  # noqa: E402
from aemia.runs import RunConfig  # noqa: E402
from aemia.train.trainer import TrainConfig  # noqa: E402
from aemia.utils.io import write_json_atomic  # noqa: E402

N_TRAIN = 798


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def run_one(model: str, fraction: float, args: argparse.Namespace, amp: str = "auto", tag: str = "") -> dict:
    steps_per_epoch = math.ceil(math.ceil(fraction * N_TRAIN) / 8)
    epochs = max(args.epochs, math.ceil(args.min_steps / steps_per_epoch))
    run_dir = args.work / f"{model}_{fraction}{tag}"
    if (run_dir / "metrics.json").exists():
        metrics = json.loads((run_dir / "metrics.json").read_text())
    else:
        cfg = RunConfig(dataset="kvasir", model=model, preset="cpu", label_fraction=fraction, size=args.size,
                        train=TrainConfig(epochs=epochs, batch_size=8, lr=2e-3, amp=amp,
                                          channels_last=amp != "none", seed=args.seed))
        resume = (run_dir / "checkpoints" / "last.safetensors").exists()
        t0 = time.time()
        print(f"== {model} at {fraction:.0%} labels ({epochs} epochs, amp={amp}){' resuming' if resume else ''}", flush=True)
        metrics = train_run(cfg, run_dir, resume=resume)
        print(f"   {metrics['headline']} in {time.time() - t0:.0f} s", flush=True)
    dice = metrics["segmentation"]["polyp"]["dice"]
    return {"dice": dice["mean"], "ci": dice["ci"], "n_test": dice["n"], "epochs": epochs,
            "labelled_cases": metrics["run"]["labelled_cases"], "train_seconds": metrics["run"]["train_seconds"],
            "best_epoch": metrics["run"]["best_epoch"], "hd95_mm": metrics["segmentation"]["polyp"]["hd95"]["mean"],
            "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir)}


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    for model, label in (("unet", "U-Net"), ("unetpp", "UNet++ (deep supervision)")):
        fr = sorted(results[model], key=float)
        x = [float(f) * 100 for f in fr]
        y = [results[model][f]["dice"] for f in fr]
        lo = [results[model][f]["dice"] - results[model][f]["ci"][0] for f in fr]
        hi = [results[model][f]["ci"][1] - results[model][f]["dice"] for f in fr]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks([10, 25, 50, 100], ["10%", "25%", "50%", "100%"])
    ax.set_xlabel("training labels used (of 798)")
    ax.set_ylabel("test Dice (95% CI)")
    ax.set_title("Kvasir-SEG, 2 CPU cores, 128 px training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--min-steps", type=int, default=600)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fractions", default="0.1,0.25,0.5,1.0")
    ap.add_argument("--models", default="unetpp,unet")
    ap.add_argument("--no-fast-mode-check", action="store_true")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "kvasir_supervised")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kvasir_supervised.json")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    fractions = [float(f) for f in args.fractions.split(",")]
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results: dict = {}
    for model in args.models.split(","):
        results[model] = {str(f): run_one(model, f, args) for f in fractions}
    out = {
        "benchmark": "kvasir_supervised",
        "command": " ".join(shlex.quote(a) for a in [sys.executable.replace(str(ROOT) + "/", ""), *sys.argv]),
        "date": started,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "recipe": {"train_size_px": args.size, "eval_grid_px": 256, "epochs": args.epochs, "min_steps": args.min_steps,
                   "batch_size": 8, "optimizer": "adam", "lr": 2e-3, "schedule": "cosine", "features": [16, 16, 32, 64, 128],
                   "amp": "bf16 autocast + channels-last (auto)", "seed": args.seed,
                   "split": "catalog kvasir seed 0: 798/100/100", "ci": "case-level percentile bootstrap, 1000 resamples"},
        **results,
        "targets": {"unetpp_full_label_dice": 0.80, "published_unetpp_kvasir_dice": 0.82},
    }
    if "unetpp" in results and "1.0" in results["unetpp"]:
        out["verdict_full_label_dice"] = "met" if results["unetpp"]["1.0"]["dice"] >= 0.80 else "not met"
    if not args.no_fast_mode_check and "unetpp" in results:
        f = min(fractions)
        fp32 = run_one("unetpp", f, args, amp="none", tag="_fp32")
        fast = results["unetpp"][str(f)]
        out["fast_mode_check"] = {"fraction": f, "fp32": fp32, "fast_bf16_channels_last": fast,
                                  "dice_difference": fast["dice"] - fp32["dice"],
                                  "train_time_ratio_fast_over_fp32": fast["train_seconds"] / max(fp32["train_seconds"], 1e-9)}
    if {"unet", "unetpp"} <= set(results):
        figure(results, args.out.with_suffix(".png"))
        out["figure"] = str(args.out.with_suffix(".png").name)
    write_json_atomic(args.out, out)
    print(json.dumps({m: {f: round(v["dice"], 4) for f, v in results[m].items()} for m in results}, indent=1))


if __name__ == "__main__":
    main()
