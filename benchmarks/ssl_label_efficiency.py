"""Benchmark: does self-supervised pretraining on unlabelled images save labels? (issue 3)

2D — Kvasir-SEG, UNet++ (CPU preset widths, deep supervision), fine-tuned on 5%, 10% and 25% of the 798 training
labels (nested seeded subsets), three initialisations:
* ``scratch``: random initialisation;
* ``genesis``: Models Genesis self-restoration pretraining on all 798 training images (labels unused);
* ``transvw``: TransVW visual-word self-classification + restoration on the same images.
Pretraining runs once per method (seed 0); fine-tuning uses the same recipe and budget for every arm (the
``kvasir_supervised`` recipe: 128 px, Adam 2e-3 cosine, batch 8, ``--epochs`` but at least ``--min-steps``
steps), ``--seeds`` seeds (subset, augmentation and head initialisation change with the seed), test Dice on the
100 test images with a case-level bootstrap 95% CI (per seed, and pooled over seeds).

3D — BraTS whole tumour (FLAIR + T1c): Genesis pretraining on the train + validation volumes (cubes, labels
unused), fine-tuning on the 2 training cases, Dice on the 2 test cases, scratch vs Genesis.

Runs live in ``benchmarks/work/ssl_label_efficiency/`` and finished ones are reused, so the benchmark resumes.

    .venv/bin/python benchmarks/ssl_label_efficiency.py                      # full (several hours on 2 cores)
    .venv/bin/python benchmarks/ssl_label_efficiency.py --fractions 0.1 --skip-3d      # one fraction; merged into the JSON
    .venv/bin/python benchmarks/ssl_label_efficiency.py --quick --out /tmp/ssl.json   # smoke run

New core, paired with training_stability's scratch seeds (two invocations side by side, then a summary):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ssl_label_efficiency.py --fractions 0.1 --seeds 5 --methods genesis \
        --model unet --amp none --pretrain-epochs 12 --skip-3d --work benchmarks/work/ssl_new_core \
        --out benchmarks/results/ssl_label_efficiency_new_core.json --train-arms genesis --train-seeds 0,2,4
    (the same with --train-seeds 1,3 beside it; then with --train-arms '' to write the summary)
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from aemia.evaluate.metrics import bootstrap_ci  # noqa: E402
from aemia.pretrain.restore import PretrainConfig, pretrain  # noqa: E402
from aemia.recipes.run import train_run  # noqa: E402
from aemia.runs import RunConfig  # noqa: E402
from aemia.train.trainer import TrainConfig  # noqa: E402
from aemia.utils.io import write_json_atomic  # noqa: E402

N_TRAIN = 798


def pretrained(method: str, args: argparse.Namespace, dims: int = 2) -> Path:
    out = args.work / f"pretrain_{method}_{dims}d"
    if not (out / "metrics.json").exists():
        if dims == 2:
            cfg = PretrainConfig(data="kvasir", dims=2, method=method, preset="cpu", size=[args.size, args.size],
                                 model=args.model,
                                 train=TrainConfig(epochs=args.pretrain_epochs, batch_size=8, lr=2e-3, optimizer="adam",
                                                   schedule="cosine", deep_supervision=False, amp=args.amp,
                                                   channels_last=args.amp != "none"))
        else:
            cfg = PretrainConfig(data=str(args.brats_unlabelled), dims=3, method=method, preset="cpu",
                                 size=list(args.cube), cubes_per_volume=args.cubes_per_volume,
                                 train=TrainConfig(epochs=args.pretrain_epochs, batch_size=4, lr=1e-3, optimizer="adam",
                                                   schedule="cosine", deep_supervision=False))
        resume = (out / "checkpoints" / "last.safetensors").exists()
        print(f"== pretraining {method} {dims}D{' (resuming)' if resume else ''}", flush=True)
        pretrain(cfg, out, resume=resume)
    return out


def ft_config(args: argparse.Namespace, frac: float, init: str | None, seed: int) -> RunConfig:
    """The fine-tuning recipe of every arm: the training core's 2D recipe as ``training_stability.py`` runs it
    (batch 8, Adam 2e-3, at least ``--min-steps`` steps, validation thinned by the trainer; channels-last only
    under bf16), so ``--model unet --amp none`` scratch runs are that benchmark's Kvasir runs, seed for seed."""
    return RunConfig(dataset="kvasir", model=args.model, preset="cpu", label_fraction=frac, size=args.size, init=init,
                     train=TrainConfig(epochs=args.epochs, batch_size=8, lr=2e-3, seed=seed, min_steps=args.min_steps,
                                       amp=args.amp, channels_last=args.amp != "none"))


def finetune(name: str, cfg: RunConfig, args: argparse.Namespace) -> dict:
    run_dir = args.work / name
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text())
    resume = (run_dir / "checkpoints" / "last.safetensors").exists()
    print(f"== {name}{' (resuming)' if resume else ''}", flush=True)
    return train_run(cfg, run_dir, resume=resume)


def _run_epochs(run_dir: Path) -> int:
    """Epochs a finished run actually trained (its config.yaml records them after the step minimum)."""
    from aemia.runs import RunFolder

    return int(RunFolder(run_dir).config().train.epochs)


def per_case_dice(run_dir: Path, column: str) -> list[float]:
    import csv

    with open(run_dir / "per_case.csv") as f:
        return [float(r[column]) for r in csv.DictReader(f)]


def kvasir(args: argparse.Namespace, out: dict, save) -> dict:
    """Fine-tune every arm at every fraction; ``out`` holds fractions measured earlier and is saved after each."""
    arms = ["scratch", *args.methods]
    train_arms = arms if args.train_arms is None else args.train_arms
    inits = {"scratch": None, **{m: str(pretrained(m, args)) for m in args.methods if m in train_arms}}
    for frac in args.fractions:
        out[str(frac)] = {}
        for arm in arms:
            names = [f"kvasir_{arm}_{frac}_s{seed}" for seed in range(args.seeds)]
            if arm in train_arms:
                for seed in range(args.seeds) if args.train_seeds is None else args.train_seeds:
                    finetune(names[seed], ft_config(args, frac, inits.get(arm), seed), args)
            if not all((args.work / n / "metrics.json").exists() for n in names):
                print(f"== {arm} at {frac}: not every seed is finished yet; left out of the summary", flush=True)
                continue
            seeds = {}
            for seed, name in enumerate(names):
                m = json.loads((args.work / name / "metrics.json").read_text())
                seeds[seed] = {**m["segmentation"]["polyp"]["dice"], "train_seconds": m["run"]["train_seconds"]}
            epochs = _run_epochs(args.work / names[0])
            pooled = bootstrap_ci(np.concatenate([per_case_dice(args.work / f"kvasir_{arm}_{frac}_s{s}", "polyp_dice")
                                                  for s in range(args.seeds)]))
            means = [v["mean"] for v in seeds.values()]
            # validated epochs only (the trainer thins validation under --min-steps; other epochs log no val_dice)
            curves = [[v for v in (json.loads(ln).get("val_dice") for ln in
                                   (args.work / f"kvasir_{arm}_{frac}_s{s}" / "log.jsonl").read_text().splitlines()
                                   if ln.strip()) if v is not None] for s in range(args.seeds)]
            out[str(frac)][arm] = {"dice": pooled.point, "ci": [pooled.lo, pooled.hi], "per_seed": means,
                                   "seed_sd": float(np.std(means, ddof=1)) if len(means) > 1 else None,
                                   "epochs": epochs, "labelled_cases": math.ceil(frac * N_TRAIN - 1e-9),
                                   "val_dice_curve": [round(float(np.mean(v)), 4) for v in zip(*curves)]}
        for arm in args.methods:
            if arm in out[str(frac)] and "scratch" in out[str(frac)]:
                out[str(frac)][f"{arm}_minus_scratch"] = out[str(frac)][arm]["dice"] - out[str(frac)]["scratch"]["dice"]
        paired = paired_with_training_stability(args, frac, out[str(frac)])
        if paired:
            out[str(frac)]["paired_with_training_stability"] = paired
        save()
    return out


def paired_with_training_stability(args: argparse.Namespace, frac: float, arms: dict) -> dict | None:
    """With ``--model unet --amp none`` every scratch run is, seed for seed, a Kvasir run of
    ``training_stability.py`` (same recipe, labelled subset and initialisation): pair each pretrained arm's seeds
    with that benchmark's recorded scratch seeds (its JSON), and report any scratch seed re-run here beside the
    recorded value (same code path, this machine: how well the pairing holds)."""
    ts_path = ROOT / "benchmarks" / "results" / "training_stability.json"
    if args.model != "unet" or args.amp != "none" or not ts_path.exists():
        return None
    ts = json.loads(ts_path.read_text()).get("kvasir", {}).get(str(frac), {})
    if ts.get("model") != "unet" or ts.get("amp") != "none":
        return None
    recorded = {r["seed"]: r["dice"] for r in ts.get("runs", [])}
    result: dict = {"scratch_recorded": recorded, "source": "benchmarks/results/training_stability.json "
                    f"kvasir[{frac}] ({ts.get('note', '')})"}
    rerun = {}
    for seed in range(args.seeds):
        f = args.work / f"kvasir_scratch_{frac}_s{seed}" / "metrics.json"
        if f.exists():
            rerun[seed] = json.loads(f.read_text())["segmentation"]["polyp"]["dice"]["mean"]
    result["scratch_rerun_here"] = rerun
    for arm in args.methods:
        if arm not in arms:
            continue
        diffs = [arms[arm]["per_seed"][s] - recorded[s] for s in range(len(arms[arm]["per_seed"])) if s in recorded]
        if diffs:
            ci = bootstrap_ci(np.asarray(diffs))
            result[f"{arm}_minus_scratch_per_seed"] = [round(d, 4) for d in diffs]
            result[f"{arm}_minus_scratch_mean"] = round(float(np.mean(diffs)), 4)
            result[f"{arm}_minus_scratch_sd"] = round(float(np.std(diffs, ddof=1)), 4) if len(diffs) > 1 else None
            result[f"{arm}_minus_scratch_ci"] = [round(ci.lo, 4), round(ci.hi, 4)]
    return result


def brats(args: argparse.Namespace) -> dict:
    init = str(pretrained("genesis", args, dims=3))
    out = {}
    for arm, weights in (("scratch", None), ("genesis", init)):
        cfg = RunConfig(dataset="brats_wt", model="unetpp", preset="cpu", patch=list(args.brats_patch), init=weights,
                        patches_per_volume=args.patches_per_volume,
                        train=TrainConfig(epochs=args.brats_epochs, batch_size=2, lr=2e-3, seed=0))
        m = finetune(f"brats_{arm}", cfg, args)
        d = m["segmentation"]["whole tumour"]["dice"]
        out[arm] = {"dice": d["mean"], "ci": d["ci"], "n_test": d["n"]}
    out["genesis_minus_scratch"] = out["genesis"]["dice"] - out["scratch"]["dice"]
    return out


def diagnose(args: argparse.Namespace, kvasir_result: dict) -> dict:
    """Why pretraining helps or not (Kvasir): the effective rank of every encoder level's features on 32
    validation images (``aemia.pretrain.diagnostics``) at random initialisation, after each pretraining and after
    fine-tuning (seed 0 of every arm and fraction whose run is in the work folder), and each run's final training
    loss (a pretrained start that fits its labels worse than scratch shows up here)."""
    from aemia.data.catalog import get_dataset
    from aemia.nets import create_model, load_weights
    from aemia.pretrain.diagnostics import encoder_feature_ranks
    from aemia.runs import PRESETS

    x = get_dataset("kvasir").arrays("val", args.size)[0][:32]

    def model(weights: Path | None) -> torch.nn.Module:
        torch.manual_seed(0)
        m = create_model(args.model, 2, 3, 2, features=PRESETS["cpu"], deep_supervision=args.model == "unetpp")
        if weights is not None:
            load_weights(m, weights, strict=False)
        return m

    ranks: dict[str, dict[str, float]] = {"random_init": encoder_feature_ranks(model(None), x)}
    for m in args.methods:
        ckpt = args.work / f"pretrain_{m}_2d" / "checkpoints" / "best"
        if ckpt.with_suffix(".safetensors").exists():
            ranks[f"{m}_pretrained"] = encoder_feature_ranks(model(ckpt), x)
    train_loss: dict[str, dict[str, list[float]]] = {}
    for frac in sorted(kvasir_result, key=float):
        for arm in ["scratch", *args.methods]:
            runs = sorted(args.work.glob(f"kvasir_{arm}_{frac}_s*"))
            done = [r for r in runs if (r / "metrics.json").exists()]
            if not done:
                continue
            first = args.work / f"kvasir_{arm}_{frac}_s0"
            if (first / "metrics.json").exists():
                ranks[f"{arm}_finetuned_{frac}"] = encoder_feature_ranks(model(first / "checkpoints" / "best"), x)
            train_loss.setdefault(frac, {})[arm] = [
                round(json.loads((r / "log.jsonl").read_text().splitlines()[-1])["train_loss"], 4) for r in done]
    return {"effective_rank": ranks, "final_train_loss": train_loss,
            "what": "effective rank (Roy & Vetterli 2007) of each UNet++ encoder level X^{i,0} on 32 Kvasir validation "
                    "images, batch statistics; channels per level " + ", ".join(str(c) for c in PRESETS["cpu"]) +
                    "; final_train_loss: last epoch's deep-supervision Dice+CE (sum over 4 heads) per seed"}


def label_savings(kvasir_result: dict, methods: list[str]) -> dict:
    """Scratch-equivalent labels of every pretrained arm: the fraction at which scratch, linearly interpolated
    between its measured fractions, reaches the arm's Dice. ``saved`` = 1 - fraction / equivalent (negative when
    the arm is below scratch); outside scratch's measured range the equivalent is a bound (``above``/``below``)."""
    fracs = sorted(float(f) for f, arms in kvasir_result.items() if "scratch" in arms)
    if len(fracs) < 2:
        return {}
    ys = [kvasir_result[str(f)]["scratch"]["dice"] for f in fracs]
    out: dict = {}
    for f in fracs:
        for m in methods:
            arm = kvasir_result[str(f)].get(m)
            if arm is None:
                continue
            d = arm["dice"]
            entry: dict = {"dice": d}
            if d > max(ys):
                entry.update(equivalent_fraction=None, above=fracs[int(np.argmax(ys))])
            elif d < min(ys):
                entry.update(equivalent_fraction=None, below=fracs[int(np.argmin(ys))])
            else:  # first crossing of the piecewise-linear scratch curve
                for (f0, y0), (f1, y1) in zip(zip(fracs, ys), zip(fracs[1:], ys[1:])):
                    if min(y0, y1) <= d <= max(y0, y1):
                        eq = f0 if y1 == y0 else f0 + (d - y0) * (f1 - f0) / (y1 - y0)
                        entry.update(equivalent_fraction=round(eq, 4), saved=round(1 - f / eq, 3))
                        break
            out.setdefault(m, {})[str(f)] = entry
    return out


def figure(result: dict, path: Path) -> None:
    """Dice vs labelled Kvasir images per initialisation (pooled 95% CI bars, per-seed dots), BraTS beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aemia.utils.io import save_figure

    k = result.get("kvasir", {})
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [3, 2, 1]})
    ax = axes[1]
    with_curves = sorted((f for f, a in k.items() if "val_dice_curve" in a.get("scratch", {})), key=float)
    if with_curves:
        frac = with_curves[0]
        for arm in ["scratch", "genesis", "transvw"]:
            if "val_dice_curve" in k[frac].get(arm, {}):
                ax.plot(range(1, len(k[frac][arm]["val_dice_curve"]) + 1), k[frac][arm]["val_dice_curve"], label=arm)
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel("validation Dice (mean over seeds)")
        ax.set_title(f"fine-tuning at {float(frac):.0%} labels", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
    else:
        ax.axis("off")
    ax = axes[0]
    for i, arm in enumerate(["scratch", "genesis", "transvw"]):
        pts = sorted((float(f), a[arm]) for f, a in k.items() if arm in a)
        if not pts:
            continue
        n = np.array([p[1]["labelled_cases"] for p in pts], float) * (1 + 0.03 * (i - 1))
        d = np.array([p[1]["dice"] for p in pts])
        lo, hi = np.array([p[1]["ci"][0] for p in pts]), np.array([p[1]["ci"][1] for p in pts])
        ax.errorbar(n, d, yerr=[d - lo, hi - d], marker="o", capsize=3, label=arm)
        for x, p in zip(n, pts):
            ax.scatter([x] * len(p[1]["per_seed"]), p[1]["per_seed"], s=10, alpha=0.5, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ticks = sorted({a["scratch"]["labelled_cases"] for a in k.values() if "scratch" in a})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training images (of 798)")
    ax.set_ylabel("test Dice (100 images)")
    ax.set_title("Kvasir-SEG UNet++: pretraining on the unlabelled images")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[2]
    b = result.get("brats")
    if b:
        arms = ["scratch", "genesis"]
        d = [b[a]["dice"] for a in arms]
        err = [[d[j] - b[a]["ci"][0] for j, a in enumerate(arms)], [b[a]["ci"][1] - d[j] for j, a in enumerate(arms)]]
        ax.bar(arms, d, yerr=err, capsize=4, color=["tab:blue", "tab:orange"])
        ax.set_title(f"BraTS whole tumour\n(3D, {b['scratch']['n_test']} test cases)", fontsize=10)
        ax.set_ylabel("Dice")
    else:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def paired_figure(result: dict, path: Path) -> bool:
    """When a fraction's pretrained arms are paired with training_stability's scratch seeds (and no scratch arm
    ran here): each seed's scratch and pretrained test Dice joined by a line, and the paired differences with
    their mean and bootstrap 95% CI. Returns False (nothing drawn) when there is no such pairing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aemia.utils.io import save_figure

    k = result.get("kvasir", {})
    fracs = [f for f, a in k.items() if "scratch" not in a and
             any(key.endswith("_minus_scratch_per_seed") for key in a.get("paired_with_training_stability", {}))]
    if not fracs:
        return False
    frac = sorted(fracs, key=float)[0]
    a, p = k[frac], k[frac]["paired_with_training_stability"]
    arms = [m for m in ("genesis", "transvw") if f"{m}_minus_scratch_per_seed" in p]
    model = result.get("setup", {}).get("model", "")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    recorded = {int(s): v for s, v in p["scratch_recorded"].items()}  # int keys in memory, str once in JSON
    for arm in arms:
        for s in sorted(recorded)[:len(a[arm]["per_seed"])]:
            ax.plot([0, 1], [recorded[s], a[arm]["per_seed"][s]], "-o", color="0.5", alpha=0.7)
            ax.annotate(f"seed {s}", (1.02, a[arm]["per_seed"][s]), fontsize=8, va="center")
    for s, v in p.get("scratch_rerun_here", {}).items():
        ax.scatter([0], [v], marker="x", s=60, color="tab:red", zorder=5, label=f"scratch seed {s} re-run here")
    ax.set_xticks([0, 1], ["scratch (training_stability)", " / ".join(arms) + " start"])
    ax.set_xlim(-0.3, 1.35)
    ax.set_ylabel("test Dice (Kvasir, 100 images)")
    ax.set_title(f"{model} at {float(frac):.0%} labels, same subset and seed per line", fontsize=10)
    ax.grid(alpha=0.3)
    if p.get("scratch_rerun_here"):
        ax.legend(fontsize=8, loc="lower left")
    ax = axes[1]
    for i, arm in enumerate(arms):
        d = np.asarray(p[f"{arm}_minus_scratch_per_seed"]) * 100
        lo, hi = (np.asarray(p[f"{arm}_minus_scratch_ci"]) * 100).tolist()
        mean = p[f"{arm}_minus_scratch_mean"] * 100
        ax.scatter(np.full(len(d), i), d, s=18, alpha=0.6)
        ax.errorbar([i], [mean], yerr=[[mean - lo], [hi - mean]], fmt="D", capsize=5, color="k")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.axhline(3, color="tab:green", lw=0.8, ls="--", label="target +3 points")
    ax.set_xticks(range(len(arms)), [f"{m} − scratch" for m in arms])
    ax.set_xlim(-0.8, len(arms) - 0.2)
    ax.set_ylabel("paired difference (Dice points)")
    ax.set_title("per seed, and mean with a bootstrap 95% CI", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return True


def brats_unlabelled_folder(work: Path) -> Path:
    """The BraTS train + validation images as a folder of 2-channel NIfTIs (labels left out), built once."""
    from aemia.data.catalog import get_dataset
    from aemia.data.io import write_nifti

    folder = work / "brats_unlabelled"
    ds = get_dataset("brats")
    cases = ds.splits["train"] + ds.splits["val"]
    if len(list(folder.glob("*.nii.gz"))) != len(cases):
        for c in cases:
            s = ds.load(c)
            write_nifti(s.image, folder / f"{c.id}.nii.gz")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", default="0.05,0.1,0.25")
    ap.add_argument("--methods", default="genesis,transvw")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--min-steps", type=int, default=3000,
                    help="at least this many fine-tuning steps (the training core's 2D default; 600 before wave 2)")
    ap.add_argument("--model", default="unetpp", help="unetpp (the benchmark's first setting) or unet")
    ap.add_argument("--amp", default="none", help="fine-tuning and pretraining precision: none (fp32) or auto")
    ap.add_argument("--train-seeds", default=None,
                    help="comma-separated seeds this invocation trains (default all); the arm is summarised once "
                         "every seed is finished")
    ap.add_argument("--train-arms", default=None,
                    help="comma-separated arms this invocation trains (scratch and/or --methods); the other arms "
                         "are summarised if their runs are finished (two invocations side by side, then one "
                         "with --train-arms '' to summarise)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    ap.add_argument("--cube", default="32,32,16")
    ap.add_argument("--cubes-per-volume", type=int, default=64)
    ap.add_argument("--brats-patch", default="64,64,64")
    ap.add_argument("--brats-epochs", type=int, default=40)
    ap.add_argument("--patches-per-volume", type=int, default=16)
    ap.add_argument("--skip-3d", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (not a measurement)")
    ap.add_argument("--summarise-only", action="store_true", help="redo label savings and figure from the JSON")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "ssl_label_efficiency")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ssl_label_efficiency.json")
    args = ap.parse_args()
    if args.quick:
        args.fractions, args.seeds, args.epochs, args.min_steps, args.size = "0.05", 1, 1, 0, 32
        args.pretrain_epochs, args.brats_epochs, args.cube, args.brats_patch = 1, 1, "16,16,16", "32,32,32"
        args.patches_per_volume, args.cubes_per_volume = 2, 4
        args.work = args.work.with_name(args.work.name + "_quick")
    args.fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    args.methods = [m for m in args.methods.split(",") if m]
    args.train_arms = None if args.train_arms is None else [a for a in args.train_arms.split(",") if a]
    args.train_seeds = None if args.train_seeds is None else [int(v) for v in args.train_seeds.split(",") if v]
    args.cube = [int(v) for v in args.cube.split(",")]
    args.brats_patch = [int(v) for v in args.brats_patch.split(",")]
    if "OMP_NUM_THREADS" not in os.environ:  # otherwise respect the caller's choice (e.g. two jobs side by side)
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result: dict = {"benchmark": "ssl_label_efficiency",
                    "command": " ".join(shlex.quote(a) for a in [sys.executable.replace(str(ROOT) + "/", ""), *sys.argv]),
                    "date": started, "quick": args.quick,
                    "machine": {"cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                                             if ln.startswith("model name")), ""), "cores": os.cpu_count(),
                                "torch": torch.__version__, "python": platform.python_version()},
                    "targets": {"genesis_minus_scratch_at_0.1": 0.03}}
    previous = json.loads(args.out.read_text()) if args.out.exists() and not args.quick else {}
    result["kvasir"] = previous.get("kvasir", {})  # fractions measured by earlier invocations are kept
    if "brats" in previous:
        result["brats"] = previous["brats"]
    result["invocations"] = [*previous.get("invocations", []), {"command": result["command"], "date": started}]

    def save() -> None:
        # another invocation (e.g. a second fraction run side by side) may have written meanwhile: keep its parts
        latest = json.loads(args.out.read_text()) if args.out.exists() and not args.quick else {}
        for frac, arms in latest.get("kvasir", {}).items():
            if frac not in [str(f) for f in args.fractions]:
                result["kvasir"][frac] = arms
        if "brats" in latest and args.skip_3d:
            result["brats"] = latest["brats"]
        known = {json.dumps(i, sort_keys=True) for i in result["invocations"]}
        result["invocations"] += [i for i in latest.get("invocations", []) if json.dumps(i, sort_keys=True) not in known]
        k = result["kvasir"]
        if "0.1" in k and "genesis_minus_scratch" in k["0.1"]:
            result["verdict_genesis_at_0.1"] = "met" if k["0.1"]["genesis_minus_scratch"] >= 0.03 else "not met"
        result["label_savings"] = label_savings(k, args.methods or ["genesis", "transvw"])
        if any(args.work.glob("kvasir_*_s0/metrics.json")):
            result["diagnosis"] = diagnose(args, k)
        result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        result["setup"] = {"model": args.model, "amp": args.amp, "min_steps": args.min_steps,
                           "pretrain_epochs": args.pretrain_epochs, "size": args.size}
        write_json_atomic(args.out, result)
        if not paired_figure(result, args.out.with_suffix(".png")):
            figure(result, args.out.with_suffix(".png"))

    if args.summarise_only:
        save()
        return
    if args.fractions:
        kvasir(args, result["kvasir"], save)
    if not args.skip_3d:
        args.brats_unlabelled = brats_unlabelled_folder(args.work)
        result["brats"] = brats(args)
        save()
    print(json.dumps(result["kvasir"], indent=1)[:2000])


if __name__ == "__main__":
    main()
