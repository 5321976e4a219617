"""Benchmark (issue 14, ``transfer``): Kvasir fine-tuned from each start at 5%, 10% and 25% labels.

Starts (``--starts``):

* ``scratch``: random initialisation;
* ``genesis``: Models Genesis self-restoration on Kvasir's training images (labels unused);
* ``dira`` / ``caid``: ``aemia pretrain dira|caid`` on the same images (:mod:`aemia.pretrain.moco`);
* ``universal``: the leave-Kvasir-out universal 2D model (``--universal``: a shipped-model name or a folder with
  ``model.safetensors``); skipped, with a note in the JSON, when it is not there. Its backbone is a U-Net, so it
  is fine-tuned as a U-Net and its difference is paired with ``scratch_unet`` (the same recipe from scratch).

Every start is fine-tuned with the same recipe: the default ``aemia train`` TrainConfig (Adam 1e-3, warm-up +
cosine, EMA 0.99 weights, UNet++ ``cpu`` preset with deep supervision, batch 8, best epoch on the validation
split), fp32, ``--epochs`` epochs but at least ``--min-steps`` optimiser steps (as ``training_stability.py``).
Budget: 64 px and 400 steps by default (``training_stability.py`` uses 128 px and 600 steps): on the 2 shared
cores a 128 px fine-tune took ~50 min under load, 64 px ~25-35 min, and the benchmark had two hours. Pretraining
also runs at ``--size``; ``--pretrain-epochs`` applies to the starts pretrained in that invocation (each
pretraining's own ``metrics.json``, copied into the JSON's ``pretraining``, records the epochs it ran). The labelled subset is fixed by ``--subset-seed`` so every start at a fraction
sees the same labelled cases; a training seed fixes initialisation of the non-pretrained parts, order and
augmentation, so start − scratch is a paired difference per seed. The test Dice of a cell is the mean over its
seeds; its interval is a test-case bootstrap of the seed-mean per-case Dice; ``minus_scratch`` is the paired
difference over the seeds both have, with a test-case bootstrap of the per-case differences.

Resumable: runs live in ``--work`` (gitignored); a finished run (``metrics.json``) is reused, a killed run
resumes from its last checkpoint; the JSON is rebuilt from every finished run in ``--work`` after each run, so
several workers with different ``--starts`` / ``--seeds`` can share one work folder::

    OMP_NUM_THREADS=1 nohup python benchmarks/universal_transfer.py --fractions 0.1 --starts scratch,genesis \\
        --seeds 0,1,2,3,4 > benchmarks/work/universal_transfer/a.log 2>&1 &
    python benchmarks/universal_transfer.py --collect-only     # rewrite the JSON from the finished runs
    python benchmarks/universal_transfer.py --diagnose-new-core   # feature ranks of the 3000-step fine-tunes
    python benchmarks/universal_transfer.py --reinit-start encoder.4   # the start without its deepest level
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from provenance import provenance  # noqa: E402

from aemia.evaluate.metrics import bootstrap_ci  # noqa: E402
from aemia.utils.io import write_json_atomic  # noqa: E402

N_TRAIN = 798  # Kvasir-SEG training split
STARTS = ("scratch", "genesis", "dira", "caid", "universal", "scratch_unet")
#: The universal model's backbone is a U-Net (h-uni's universal2d-no-kvasir): it is fine-tuned as a U-Net and
#: paired with a scratch U-Net; every other start is the default UNet++.
MODEL = {"universal": "unet", "scratch_unet": "unet"}
BASELINE = {"universal": "scratch_unet"}
TARGET_SEEDS = 5


def run_name(fraction: float, start: str, seed: int) -> str:
    return f"kvasir_{fraction}_{start}_s{seed}"


def pretrained(start: str, args: argparse.Namespace) -> str | None:
    """The ``--init`` of a start (pretraining it first when needed); None for scratch or a missing model."""
    import torch

    from aemia.train.trainer import TrainConfig

    if start in ("scratch", "scratch_unet"):
        return None
    if start == "universal":
        return universal_init(args.universal)
    out = args.work / f"pretrain_{start}"
    if (out / "metrics.json").exists():
        return str(out)
    resume = (out / "checkpoints" / "last.safetensors").exists()
    print(f"== pretraining {start}{' (resuming)' if resume else ''}", flush=True)
    t0 = time.time()
    torch.set_num_threads(1)
    if start == "genesis":  # as ssl_label_efficiency.py (the "-7.5 points" measurement)
        from aemia.pretrain.restore import PretrainConfig, pretrain

        cfg = PretrainConfig(data="kvasir", dims=2, method="genesis", preset="cpu", size=[args.size, args.size],
                             train=TrainConfig(epochs=args.pretrain_epochs, batch_size=8, lr=2e-3, optimizer="adam",
                                               schedule="cosine", deep_supervision=False, amp="none",
                                               channels_last=False))
        pretrain(cfg, out, resume=resume)
    else:
        from aemia.pretrain.moco import ContrastiveConfig, pretrain_contrastive

        cfg = ContrastiveConfig.cpu(method=start, data="kvasir", size=args.size, epochs=args.pretrain_epochs)
        cfg.train.amp, cfg.train.channels_last = "none", False
        pretrain_contrastive(cfg, out, resume=resume)
    print(f"   pretrained {start} in {time.time() - t0:.0f} s", flush=True)
    return str(out)


def universal_init(spec: str) -> str | None:
    """A shipped model's weights file (by name or folder), or None when it is not there."""
    path = Path(spec)
    if not path.exists():
        try:
            from aemia.runs.shipped import shipped_model_dir

            path = shipped_model_dir(spec)
        except Exception:  # noqa: BLE001 - not shipped (yet): the column is skipped
            return None
    if path.is_dir() and (path / "model.safetensors").exists():
        return str(path / "model.safetensors")
    if path.is_dir() and (path / "checkpoints" / "best.safetensors").exists():
        return str(path)
    return str(path) if path.is_file() else None


def epochs_for(fraction: float, args: argparse.Namespace) -> int:
    steps_per_epoch = math.ceil(math.ceil(fraction * N_TRAIN) / 8)
    return max(args.epochs, math.ceil(args.min_steps / steps_per_epoch))


def finetune(fraction: float, start: str, seed: int, init: str | None, args: argparse.Namespace) -> None:
    from aemia.recipes.run import train_run
    from aemia.runs import RunConfig
    from aemia.train.trainer import TrainConfig

    run_dir = args.work / run_name(fraction, start, seed)
    if (run_dir / "metrics.json").exists():
        return
    resume = (run_dir / "checkpoints" / "last.safetensors").exists()
    cfg = RunConfig(dataset="kvasir", model=MODEL.get(start, "unetpp"), preset="cpu", label_fraction=fraction, size=args.size,
                    subset_seed=args.subset_seed, init=init,
                    train=TrainConfig(epochs=epochs_for(fraction, args), batch_size=8, seed=seed, amp="none",
                                      channels_last=False, progress=False))
    print(f"== {run_dir.name}{' (resuming)' if resume else ''}", flush=True)
    t0 = time.time()
    metrics = train_run(cfg, run_dir, resume=resume)
    print(f"   {metrics.get('headline', '')} in {time.time() - t0:.0f} s", flush=True)


def per_case_dice(run_dir: Path) -> np.ndarray:
    with open(run_dir / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["polyp_dice"]) for r in rows])


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Every finished run in ``--work`` → the ``transfer`` layout, with seed means, CIs and paired differences."""
    cells: dict[str, Any] = {}
    incomplete: list[str] = []
    for fraction in (0.05, 0.1, 0.25):
        row: dict[str, Any] = {}
        done: dict[str, dict[int, np.ndarray]] = {}
        for start in STARTS:
            runs = {}
            for seed in range(TARGET_SEEDS):
                d = args.work / run_name(fraction, start, seed)
                if (d / "metrics.json").exists():
                    runs[seed] = d
            if not runs:
                incomplete.append(f"{fraction}/{start}: no seeds")
                continue
            if len(runs) < TARGET_SEEDS:
                incomplete.append(f"{fraction}/{start}: {len(runs)} of {TARGET_SEEDS} seeds")
            per_case = {s: per_case_dice(d) for s, d in runs.items()}
            done[start] = per_case
            means = [float(json.loads((d / "metrics.json").read_text())["segmentation"]["polyp"]["dice"]["mean"])
                     for d in runs.values()]
            ci = bootstrap_ci(np.mean(np.stack(list(per_case.values())), axis=0))
            first = json.loads((next(iter(runs.values())) / "metrics.json").read_text())
            row[start] = {"dice": float(np.mean(means)), "ci": [ci.lo, ci.hi], "seeds": means,
                          "seed_ids": sorted(runs), "seed_sd": float(np.std(means, ddof=1)) if len(means) > 1 else None,
                          "train_seconds": [float(json.loads((d / "metrics.json").read_text())["run"]["train_seconds"])
                                            for d in runs.values()],
                          "epochs": epochs_for(fraction, args), "labelled_cases": math.ceil(fraction * N_TRAIN - 1e-9),
                          "n_test": int(first["segmentation"]["polyp"]["dice"]["n"])}
        for start, per_case in done.items():
            base = BASELINE.get(start, "scratch")
            if start.startswith("scratch") or base not in done:
                continue
            common = sorted(set(per_case) & set(done[base]))
            if not common:
                continue
            diffs = np.stack([per_case[s] - done[base][s] for s in common])
            ci = bootstrap_ci(diffs.mean(axis=0))
            row[start]["minus_scratch"] = {"dice": ci.point, "ci": [ci.lo, ci.hi], "seeds": common, "baseline": base,
                                           "per_seed": [float(d.mean()) for d in diffs]}
        for start in row:
            row[start]["model"] = MODEL.get(start, "unetpp")
        if row:
            cells[str(fraction)] = row
    return {"transfer": {"kvasir": cells}, "incomplete": incomplete}


def write(args: argparse.Namespace, universal_note: str | None) -> None:
    out = {"benchmark": "universal_transfer", **collect(args), **provenance(),
           "recipe": {"fine_tune": "default aemia train TrainConfig (adam 1e-3, warm-up + cosine, EMA 0.99, UNet++ cpu "
                                   "preset, deep supervision, batch 8), fp32, max(epochs, min-steps) epochs",
                      "size": args.size, "epochs": args.epochs, "min_steps": args.min_steps,
                      "subset_seed": args.subset_seed, "ci": "95% test-case bootstrap of the seed-mean "
                      "per-case Dice; minus_scratch: paired per seed, bootstrap of per-case differences"},
           "targets": {"universal_minus_scratch_at_0.1": 0.03}}
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    for key, value in previous.items():  # what other commands recorded (notes, transfer_new_core, ...) stays
        out.setdefault(key, value)
    if universal_note:
        out.setdefault("notes", {})["universal"] = universal_note
    pre = {}
    for start in ("genesis", "dira", "caid"):
        m = args.work / f"pretrain_{start}" / "metrics.json"
        if m.exists():
            pre[start] = json.loads(m.read_text())
    if pre:
        out["pretraining"] = pre
    write_json_atomic(args.out, out)


def diagnose_new_core(args: argparse.Namespace) -> dict[str, Any]:
    """Why the universal start loses at the new core's recipe (``transfer_new_core``): for the random
    initialisation, the universal start and every finished Kvasir-10% U-Net run of ``training_stability.py`` in
    ``--stability-work`` (universal starts and scratch), the effective rank of each encoder level on 32 Kvasir
    validation images (:mod:`aemia.pretrain.diagnostics`, as ``ssl_label_efficiency.py`` does for Genesis), the
    first and best validation Dice and the last epoch's training loss. Merged into the JSON's
    ``transfer_new_core["diagnosis"]``."""
    import torch

    from aemia.data.catalog import get_dataset
    from aemia.nets import create_model, load_weights
    from aemia.pretrain.diagnostics import encoder_feature_ranks
    from aemia.runs import PRESETS
    from aemia.runs.init import init_weights

    x = get_dataset("kvasir").arrays("val", 128)[0][:32]

    def unet() -> torch.nn.Module:
        torch.manual_seed(0)
        return create_model("unet", 2, 3, 2, features=PRESETS["cpu"])

    start = unet()
    init_weights(start, args.universal, say=lambda _s: None)
    ranks = {"random_init": encoder_feature_ranks(unet(), x), "universal_start": encoder_feature_ranks(start, x)}
    runs: dict[str, dict[str, Any]] = {}
    for run in sorted(args.stability_work.glob("kvasir_unet_0.1_s*_3000st*")):
        if not (run / "metrics.json").exists():
            continue
        m = unet()
        load_weights(m, run / "checkpoints" / "best", strict=True)
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        val = [(e["epoch"], round(e["val_dice"], 3)) for e in log if "val_dice" in e]
        init = run.name.split("_init-", 1)[1].rsplit("_", 1)[0] if "_init-" in run.name else "scratch"
        runs[run.name] = {"start": init,
                          "effective_rank": encoder_feature_ranks(m, x),
                          "final_train_loss": round(log[-1]["train_loss"], 3),
                          "first_val_dice": val[0], "best_val_dice": max(val, key=lambda v: v[1])}
    if not runs:
        raise SystemExit(f"{args.stability_work}: no finished kvasir_unet_0.1_s*_3000st* run (training_stability.py)")
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    diagnosis = {"effective_rank": ranks, "fine_tuned": runs, "images": "32 Kvasir validation images at 128 px",
                 **provenance()}
    data.setdefault("transfer_new_core", {})["diagnosis"] = diagnosis
    write_json_atomic(args.out, data)
    return diagnosis


def reinit_start(args: argparse.Namespace) -> Path:
    """A copy of the universal start without the tensors under ``--reinit-start`` (e.g. ``encoder.4``, the
    deepest encoder level), written to ``<--work>/<name>-reinit-<module>/``: fine-tuned with
    ``training_stability.py --init <that folder>``, those layers start from the seeded random initialisation and
    everything else from the universal model. Tests the diagnosis that the narrow deepest level is what costs."""
    from safetensors.torch import load_file, save_file

    src = universal_init(args.universal)
    if src is None:
        raise SystemExit(f"{args.universal!r}: universal start not found")
    folder = Path(src).parent if Path(src).is_file() else Path(src)
    tensors = load_file(str(folder / "model.safetensors"))
    prefixes = tuple(f"{p}{m}." for m in args.reinit_start.split(",") for p in ("", "backbone."))
    kept = {k: v for k, v in tensors.items() if not k.startswith(prefixes)}
    if len(kept) == len(tensors):
        raise SystemExit(f"{folder}: no tensor under {args.reinit_start!r}")
    dest = args.work / f"{folder.name}-reinit-{args.reinit_start.replace(',', '+')}"
    dest.mkdir(parents=True, exist_ok=True)
    save_file(kept, str(dest / "model.safetensors.tmp"))  # temp file, then rename: never a half-written start
    (dest / "model.safetensors.tmp").replace(dest / "model.safetensors")
    write_json_atomic(dest / "config.json", json.loads((folder / "config.json").read_text()))
    print(f"{dest}: {len(tensors) - len(kept)} of {len(tensors)} tensors left out ({args.reinit_start})")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", default="0.1,0.05,0.25")
    ap.add_argument("--starts", default=",".join(STARTS))
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--min-steps", type=int, default=400)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pretrain-epochs", type=int, default=12)
    ap.add_argument("--universal", default="universal2d-no-kvasir",
                    help="shipped model name or folder of the leave-Kvasir-out universal model")
    ap.add_argument("--pretrain-only", action="store_true", help="pretrain the starts, fine-tune nothing")
    ap.add_argument("--collect-only", action="store_true", help="only rewrite the JSON from finished runs")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "universal_transfer")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "universal_transfer.json")
    ap.add_argument("--diagnose-new-core", action="store_true",
                    help="only add transfer_new_core['diagnosis'] (feature ranks, losses) from --stability-work")
    ap.add_argument("--stability-work", type=Path, default=ROOT / "benchmarks" / "work" / "training_stability",
                    help="training_stability.py's work folder (its Kvasir 10%% U-Net runs)")
    ap.add_argument("--reinit-start", default=None, metavar="MODULES",
                    help="only write a copy of the universal start without these modules (comma-separated, e.g. "
                         "encoder.4) for training_stability.py --init")
    args = ap.parse_args()
    if args.reinit_start:
        args.work.mkdir(parents=True, exist_ok=True)
        reinit_start(args)
        return
    if args.diagnose_new_core:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(diagnose_new_core(args)["effective_rank"], indent=1))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    starts = [s for s in args.starts.split(",") if s]
    unknown = set(starts) - set(STARTS)
    if unknown:
        ap.error(f"unknown starts {sorted(unknown)}; choose from {STARTS}")
    note = None
    if "universal" in starts and universal_init(args.universal) is None:
        note = f"universal column skipped: {args.universal!r} not found (not shipped yet)"
        print(note, flush=True)
        starts.remove("universal")
    if not args.collect_only:
        import torch

        torch.set_num_threads(1)
        inits = {s: pretrained(s, args) for s in starts}
        if not args.pretrain_only:
            for fraction in [float(f) for f in args.fractions.split(",")]:
                for seed in [int(s) for s in args.seeds.split(",")]:
                    for start in starts:
                        finetune(fraction, start, seed, inits[start], args)
                        write(args, note)
    write(args, note)


if __name__ == "__main__":
    main()
