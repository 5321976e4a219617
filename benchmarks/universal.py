"""Universal model vs specialists (issue 14, ``specialist_vs_universal``) → benchmarks/results/universal.json.

Stages (each resumable; run folders under benchmarks/work/universal/):

    python benchmarks/universal.py train --name all            # the universal model on all six 2D sets
    python benchmarks/universal.py train --name no-kvasir      # the leave-Kvasir-out variant
    python benchmarks/universal.py train --name spec-kvasir    # a specialist (one per data set)
    python benchmarks/universal.py report                      # evaluate what exists, write the JSON

Recipe: the CPU preset of :mod:`aemia.universal.training` (U-Net widths 16,16,32,64,128, 128 px; MedMNIST at
64 px), ``--cycles`` Ark cycles of ``--steps`` batches of 16 per data-set turn. A specialist is the same model
and recipe on its data set alone with the same number of steps on that data set as the universal model spent
on it (the universal model's total budget split over its data sets).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work" / "universal"
SETS = ["kvasir", "ph2", "drive", "busi", "pneumoniamnist", "breastmnist"]


def datasets_of(name: str) -> list[str]:
    if name == "all":
        return list(SETS)
    if name.startswith("no-"):
        return [s for s in SETS if s != name[3:]]
    if name.startswith("spec-"):
        return [name[5:]]
    raise SystemExit(f"unknown run name {name}")


def train(name: str, cycles: int, steps: int) -> None:
    from aemia.universal.training import UniversalConfig, train_universal

    run = WORK / name
    resume = (run / "checkpoints" / "last.safetensors").is_file()
    cfg = UniversalConfig(datasets=datasets_of(name), cycles=cycles, steps_per_turn=steps)
    cfg.train.progress = False
    t0 = time.time()
    train_universal(cfg, run, resume=resume)
    print(f"{name}: trained in {time.time() - t0:.0f} s", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["train", "report"])
    ap.add_argument("--name", default="all")
    ap.add_argument("--cycles", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    if args.stage == "train":
        train(args.name, args.cycles, args.steps)
    else:
        from benchmarks_universal_report import report  # noqa: F401 - placeholder until the report stage exists


if __name__ == "__main__":
    main()
