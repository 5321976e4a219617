"""Benchmark (issue 17): a liver + tumour model trained without a tumour label, tested on real tumours.

Data (:func:`aemia.data.catalog` ``liver_ct``): every healthy liver mask we have (CHAOS ``chaos_ct_sample``, the
TotalSegmentator CT ``ts_example_ct`` and its DICOM series ``ts_example_ct_dicom``) is a training case; tumours
come only from :class:`aemia.synth.transform.RandTumorSynthesisd` (:mod:`aemia.recipes.liver_tumor`). The one
real-tumour CT, 3D-IRCADb-01 patient 17 (``ircad_17``), is never trained on.

Runs (each resumable; ``benchmarks/work/real_tumor_transfer/<run>``):

* ``full-s0`` trains on all three healthy livers (seed 0): the shipped model;
* ``loo-<case>`` leave-one-case-out runs, one per training case, with seeds 0, 1, 2: each is scored on its held-out
  case's real liver mask (liver Dice) and on synthetic validation tumours in that held-out healthy liver
  (tumour Dice, sensitivity by size, false positives per case, FROC). They are the recipe's three seeds; their
  spread mixes seed and held-out case, and the JSON says so.

Every run is also applied to ``ircad_17``: liver Dice, tumour Dice, each real tumour (diameter, detected,
confidence), false positives, FROC. The tumour volume threshold of the post-processing
(:func:`aemia.infer.lesions.postprocess_liver_tumor`) is chosen on the synthetic validation only.

    OMP_NUM_THREADS=1 python benchmarks/real_tumor_transfer.py --stage train --runs full-s0,loo-chaos_ct_sample
    OMP_NUM_THREADS=1 python benchmarks/real_tumor_transfer.py --stage eval      # scores what has finished
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "real_tumor_transfer"
TRAIN_CASES = ("ts_example_ct_dicom", "chaos_ct_sample", "ts_example_ct")  # loo seed k holds out TRAIN_CASES[k]
ALL_RUNS = ("full-s0", *(f"loo-{c}" for c in TRAIN_CASES))


def run_spec(name: str) -> tuple[int, str | None]:
    """(seed, held-out case or None) of a run name."""
    if name == "full-s0":
        return 0, None
    case = name.removeprefix("loo-")
    if case not in TRAIN_CASES:
        raise SystemExit(f"unknown run {name!r}; runs: {', '.join(ALL_RUNS)}")
    return TRAIN_CASES.index(case), case


def make_config(args: argparse.Namespace, seed: int, n_cases: int) -> Any:
    from aemia.runs import RunConfig
    from aemia.train.trainer import TrainConfig

    per_volume = max(1, args.patches_per_epoch // n_cases)
    return RunConfig(dataset="liver_ct", model="unet", preset="cpu", task="liver-tumor", synthetic_tumors=True,
                     patch=[int(v) for v in args.patch.split(",")], spacing=[float(v) for v in args.spacing.split(",")],
                     patches_per_volume=per_volume,
                     train=TrainConfig(epochs=args.epochs, batch_size=2, lr=1e-3, optimizer="adamw",
                                       weight_decay=1e-5, seed=seed, amp=args.amp, progress=False))


def train(name: str, args: argparse.Namespace) -> Path:
    """Train (or resume) one run; returns its folder."""
    import torch

    from aemia.data.catalog import get_dataset
    from aemia.recipes.liver_tumor import build_liver_tumor
    from aemia.runs import RunFolder
    from aemia.train.trainer import Trainer

    seed, held_out = run_spec(name)
    run_dir = WORK / name
    folder = RunFolder(run_dir)
    ds = get_dataset("liver_ct")
    labelled = [c for c in ds.case_ids("train") if c != held_out]
    resume = folder.has_checkpoint("last")
    cfg = folder.config() if resume else make_config(args, seed, len(labelled))
    if (run_dir / "trained.txt").exists():
        return run_dir
    torch.manual_seed(seed)
    model, train_set, _, task = build_liver_tumor(cfg, ds, labelled)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder.save_config(cfg)
    folder.save_splits({**ds.split_manifest(), "labelled": labelled, "held_out": held_out})
    # no per-epoch validation: the held-out scores below are the validation; best = the last (EMA) weights
    Trainer(model, train_set, None, cfg.train, run_dir, task=task).fit(resume=resume)
    (run_dir / "trained.txt").write_text("done\n")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", choices=("train", "eval", "all"), default="all")
    ap.add_argument("--runs", default=",".join(ALL_RUNS), help="comma-separated: " + ", ".join(ALL_RUNS))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patches-per-epoch", type=int, default=48)
    ap.add_argument("--patch", default="64,64,48")
    ap.add_argument("--spacing", default="2,2,2")
    ap.add_argument("--amp", default="auto")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    torch.set_num_threads(1)
    runs = [r for r in args.runs.split(",") if r]
    if args.stage in ("train", "all"):
        for name in runs:
            print(f"training {name}", flush=True)
            train(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
