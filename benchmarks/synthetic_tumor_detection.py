"""Benchmark: a liver + tumor model trained with no tumor annotation, scored lesion-wise by size on a held-out CT.

Issue 6. ``aemia train --dataset totalseg_ct --task liver-tumor --synthetic-tumors`` (library form: ``train_run``)
trains a 3D network on the bundled 3 mm TotalSegmentator CT only (its liver mask, label 5; tumors synthesized on
the fly, :mod:`aemia.recipes.liver_tumor`). The DICOM CT (a different scan, 0.98 × 0.98 × 2 mm, upper abdomen) is
held out: it gets ``--variants`` synthetic *validation* versions with ``--per-bin`` separate tumors in each size
bin (≤5, 5–10, 10–20, >20 mm equivalent diameter), made in its own geometry, and the model (resampling to its
2 mm working grid and back) is scored on them:

* lesion-wise sensitivity per size bin (a tumor is detected if any predicted tumor voxel overlaps it) with a
  case-resampling 95% CI, overall sensitivity, false-positive tumor components per case (CI);
* tumor and liver Dice with CIs.

The label map is the run's decision rule, chosen after training on the *training* CT's synthetic validation
version (:func:`aemia.recipes.liver_tumor.choose_tumor_threshold`): tumour where its probability reaches a
threshold, then the largest liver component.

With one training CT the model sees one liver in many synthetic variations; the held-out scan tests whether it
generalises to another scanner, field of view and spacing. Real liver tumors are the real test and are not
bundled (``aemia predict`` on a LiTS case writes the mask and a per-lesion CSV).

    .venv/bin/python benchmarks/synthetic_tumor_detection.py     # 1500 steps: about 35 minutes beside another job
    .venv/bin/python benchmarks/synthetic_tumor_detection.py --epochs 1 --min-steps 0 --out /tmp/d.json   # smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patches-per-volume", type=int, default=16)
    ap.add_argument("--model", default="unet")
    ap.add_argument("--patch", default="64,64,48")
    ap.add_argument("--spacing", default="2,2,2")
    ap.add_argument("--variants", type=int, default=4, help="synthetic validation versions of the held-out CT")
    ap.add_argument("--per-bin", type=int, default=2, help="tumors per size bin in each validation version")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loss", default="dice_ce", help="dice_ce (per-sample Dice) or dice_ce_batch (nnU-Net batch Dice)")
    ap.add_argument("--min-steps", type=int, default=1500,
                    help="at least this many optimiser steps (epochs raised); 800 steps found 0/32 under the argmax")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--augment", default="strong", help="strong (STRONG_3D + HU jitter), light (pre-wave-2) or none")
    ap.add_argument("--run", type=Path, default=ROOT / "benchmarks" / "work" / "synthetic_tumor_detection")
    ap.add_argument("--fresh", action="store_true", help="delete an existing run folder first")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "synthetic_tumor_detection.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from aemia.data.catalog import get_dataset
    from aemia.recipes.liver_tumor import evaluate_liver_tumor
    from aemia.recipes.run import train_run
    from aemia.runs import RunConfig, RunFolder, labelled_subset
    from aemia.train.trainer import TrainConfig
    from aemia.utils.io import write_json_atomic

    if args.fresh and args.run.exists():
        shutil.rmtree(args.run)
    t0 = time.time()
    cfg = RunConfig(dataset="totalseg_ct", model=args.model, preset="cpu", task="liver-tumor", synthetic_tumors=True,
                    patch=[int(v) for v in args.patch.split(",")], spacing=[float(v) for v in args.spacing.split(",")],
                    patches_per_volume=args.patches_per_volume, augment=args.augment,
                    train=TrainConfig(epochs=args.epochs, batch_size=2, lr=args.lr, optimizer="adamw", weight_decay=1e-5,
                                      seed=args.seed, loss=args.loss, min_steps=args.min_steps))
    if not (args.run / "metrics.json").exists():  # train (or resume a killed training), evaluated with defaults
        train_run(cfg, args.run, resume=(args.run / "checkpoints" / "last.safetensors").exists())
    import json

    cfg = RunFolder(args.run).config()
    ds = get_dataset(cfg.dataset)
    history = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines() if line.strip()]
    summary = evaluate_liver_tumor(args.run, cfg, ds, history, labelled_subset(ds.case_ids("train"), 1.0, cfg.train.seed),
                                   val_variants=args.variants, per_bin=args.per_bin)
    les = summary["lesion_detection"]
    seg = summary["segmentation"]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    result: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "benchmarks/synthetic_tumor_detection.py",
                                                     *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "setup": {"train": "totalseg_ct example_ct (3 mm), liver mask only, synthetic tumors on the fly",
                  "held_out": "totalseg_ct example_ct_dicom (0.98 x 0.98 x 2 mm), never seen in training",
                  "validation_versions": args.variants, "tumors_per_bin": args.per_bin,
                  "tumor_annotations_used": 0, "run": summary.get("run")},
        "sensitivity_by_size": {b["label"]: {"sensitivity": b["sensitivity"], "ci": b["ci"], "n_lesions": b["n_lesions"],
                                             "n_detected": b["n_detected"]} for b in les["bins"]},
        "sensitivity_overall": les["overall"],
        "false_positives_per_case": les["false_positives_per_case"],
        "dice": {"tumor": seg["liver tumor"]["dice"], "liver": seg["liver"]["dice"]},
        "headline": summary.get("headline"),
        "run_dir": str(args.run),
        "seconds": round(time.time() - t0, 1),
    }
    write_json_atomic(args.out, result)
    print(result["headline"])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
