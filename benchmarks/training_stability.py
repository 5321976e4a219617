"""Benchmark: is the training core stable, strong and reproducible? (issue "Stable, strong, reproducible training")

Parts (each resumable; finished runs are reused from ``benchmarks/work/training_stability/``; the JSON is
rewritten after every run so a partial result is never lost):

* ``kvasir``: Kvasir-SEG test Dice at label fractions (default 0.1, 0.25, 1.0) over seeds (default 0-4),
  the default recipe of ``aemia train`` (MONAI augmentation, warm-up + cosine, EMA weights, best epoch on the
  100-image validation split, never the test split), 128 px training, test Dice at the native 256 px.
  Every run trains ``--epochs`` epochs but at least ``--min-steps`` (3000) optimiser steps
  (``TrainConfig.min_steps``, which also thins validation to about 40 passes); 600 steps, the earlier setting, left 10% and 25% of Kvasir underfitted (the
  ``0.1`` and ``0.1_fixed_subset0`` rows). ``--amp none`` by
  default: fp32 gives the same numbers on every x86 CPU, bf16 does not (see ``amp_variation``).
* ``pneumoniamnist``: test AUC of the ResNet at 5% labels over seeds.
* ``busi_active_cli``: the real ``aemia active`` CLI on BUSI (``training_stability_parts/busi_active_cli.py``).
* ``amp_variation``: one Kvasir run in fp32 and in bf16: what the CPU's bf16 arithmetic changes.
* ``liver_tumor``: ``synthetic_tumor_detection.py`` (no tumour annotation; held-out CT with synthetic tumours)
  once per seed at ``--liver-min-steps`` (1500) optimiser steps; tumour Dice, lesion sensitivity and false positives per case with their
  CIs, and whether the seeds agree (every seed's CI overlaps every other's).
* ``liver_tumor_product``: the same agreement for the recipe aemia ships (issue 17), whose seeds
  ``real_tumor_transfer.py --stage seeds`` trains and scores on one held-out liver; recorded as
  ``liver_tumor.product_recipe``.
* ``repeat_test_suite``: ``repeat_test_suite.sh``: ``make test`` ``--repeats`` times on fresh clones.

    .venv/bin/python benchmarks/training_stability.py --parts kvasir --fractions 0.1 --seeds 0,1,2,3,4
    .venv/bin/python benchmarks/training_stability.py --parts kvasir --fractions 0.1 --seeds 0 --epochs 1 --min-steps 0 --out /tmp/t.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from provenance import provenance  # noqa: E402

from aemia.recipes.run import train_run  # noqa: E402
from aemia.runs import RunConfig  # noqa: E402
from aemia.train.trainer import TrainConfig  # noqa: E402
from aemia.utils.io import write_json_atomic  # noqa: E402

N_TRAIN = {"kvasir": 798, "pneumoniamnist": 4708}


def _train(name: str, cfg: RunConfig, work: Path) -> tuple[dict[str, Any], Path]:
    run_dir = work / name
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text()), run_dir
    resume = (run_dir / "checkpoints" / "last.safetensors").exists()
    t0 = time.time()
    print(f"== {name}{' (resuming)' if resume else ''}", flush=True)
    metrics = train_run(cfg, run_dir, resume=resume)
    print(f"   {metrics.get('headline', '')} in {time.time() - t0:.0f} s", flush=True)
    return metrics, run_dir


def _epochs(dataset: str, fraction: float, batch: int, args: argparse.Namespace) -> int:
    steps_per_epoch = math.ceil(math.ceil(fraction * N_TRAIN[dataset]) / batch)
    return max(args.epochs, math.ceil(args.min_steps / steps_per_epoch))


def _summary(values: list[float], key: str) -> dict[str, Any]:
    return {f"{key}_mean": statistics.fmean(values), f"{key}_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seeds": values}


def part_kvasir(args: argparse.Namespace, out: dict[str, Any]) -> None:
    res = out.setdefault("kvasir", {})
    for fraction in args.fractions:
        rows = []
        for seed in args.seeds:
            epochs = _epochs("kvasir", fraction, 8, args)
            cfg = RunConfig(dataset="kvasir", model=args.model, preset="cpu", label_fraction=fraction, size=args.size,
                            subset_seed=args.subset_seed, init=args.init,
                            train=TrainConfig(epochs=args.epochs, min_steps=args.min_steps, batch_size=8, lr=args.lr,
                                              amp=args.amp, seed=seed, channels_last=args.amp != "none"))
            sub = "" if args.subset_seed is None else f"_sub{args.subset_seed}"
            steps = "" if args.min_steps == 600 else f"_{args.min_steps}st"
            start = "" if args.init is None else f"_init-{Path(args.init).name}"
            metrics, run_dir = _train(f"kvasir_{args.model}_{fraction}_s{seed}{sub}{steps}{start}_{args.amp}", cfg,
                                      args.work)
            dice = metrics["segmentation"]["polyp"]["dice"]
            rows.append({"seed": seed, "dice": dice["mean"], "ci": dice["ci"], "epochs": epochs,
                         "steps": epochs * math.ceil(math.ceil(fraction * N_TRAIN["kvasir"]) / 8),
                         "best_epoch": metrics["run"]["best_epoch"], "train_seconds": metrics["run"]["train_seconds"]})
            key = (str(fraction) if args.subset_seed is None else f"{fraction}_fixed_subset{args.subset_seed}") + \
                ("" if args.min_steps == 3000 else f"_{args.min_steps}_steps") + \
                ("" if args.init is None else f"_init_{Path(args.init).name}")
            res[key] = {**_summary([r["dice"] for r in rows], "dice"), "runs": rows, "model": args.model,
                        "amp": args.amp, "init": args.init or "scratch",
                        "labelled_subset": "seed of each run" if args.subset_seed is None else
                        f"fixed (seed {args.subset_seed}): seeds vary initialisation, order and augmentation only"}
            _write(args, out)


def part_pneumoniamnist(args: argparse.Namespace, out: dict[str, Any]) -> None:
    res = out.setdefault("pneumoniamnist", {})
    fraction = 0.05
    rows = []
    for seed in args.seeds:
        epochs = _epochs("pneumoniamnist", fraction, 32, args)
        cfg = RunConfig(dataset="pneumoniamnist", model="resnet", preset="cpu", label_fraction=fraction,
                        train=TrainConfig(epochs=epochs, batch_size=32, lr=args.lr, amp=args.amp, seed=seed,
                                          channels_last=args.amp != "none"))
        metrics, _ = _train(f"pneumoniamnist_{fraction}_s{seed}_{args.amp}", cfg, args.work)
        auc = metrics["classification"]["auc"]
        rows.append({"seed": seed, "auc": auc["mean"], "ci": auc["ci"], "epochs": epochs,
                     "best_epoch": metrics["run"]["best_epoch"]})
        res[str(fraction)] = {**_summary([r["auc"] for r in rows], "auc"), "runs": rows, "amp": args.amp}
        _write(args, out)


def part_amp_variation(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """The same Kvasir run (first fraction, first seed) in fp32 and under bf16 autocast: what a CPU's bf16
    arithmetic changes. fp32 results are the same on every x86 CPU with the same torch build; bf16 rounding
    (and whether bf16 is used at all under --amp auto) depends on the CPU (AMX, AVX512-BF16 or none)."""
    fraction, seed = args.fractions[0], args.seeds[0]
    rows = {}
    for amp in ("none", "bf16"):
        epochs = _epochs("kvasir", fraction, 8, args)
        cfg = RunConfig(dataset="kvasir", model=args.model, preset="cpu", label_fraction=fraction, size=args.size,
                        train=TrainConfig(epochs=epochs, batch_size=8, lr=args.lr, amp=amp, seed=seed,
                                          channels_last=amp != "none"))
        metrics, _ = _train(f"kvasir_{args.model}_{fraction}_s{seed}_{amp}", cfg, args.work)
        rows[amp] = {"dice": metrics["segmentation"]["polyp"]["dice"]["mean"],
                     "train_seconds": metrics["run"]["train_seconds"]}
    out["amp_variation"] = {"kvasir_fraction": fraction, "seed": seed, "model": args.model, **rows,
                            "dice_bf16_minus_fp32": rows["bf16"]["dice"] - rows["none"]["dice"]}
    _write(args, out)


def part_busi_active_cli(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from training_stability_parts.busi_active_cli import run

    path = args.work / "busi_active_cli.json"
    run(path)
    out["busi_active_cli"] = json.loads(path.read_text())
    _write(args, out)


def _overlap(cis: list[list[float]]) -> dict[str, Any]:
    """Do these 95% CIs agree? ``pairwise``: every two overlap; ``common``: one value lies in all of them."""
    pairwise = all(a[0] <= b[1] and b[0] <= a[1] for a, b in itertools.combinations(cis, 2))
    return {"pairwise_overlap": pairwise, "common_overlap": max(c[0] for c in cis) <= min(c[1] for c in cis)}


def part_liver_tumor(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """The liver + tumour recipe (``synthetic_tumor_detection.py``) once per seed; a finished seed is reused."""
    rows = []
    for seed in args.seeds:
        name = f"std_e{args.liver_epochs}_{args.liver_min_steps}st_s{seed}"
        res_path = ROOT / "benchmarks" / "work" / f"{name}.json"
        if not res_path.exists():
            print(f"== liver_tumor seed {seed}", flush=True)
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "synthetic_tumor_detection.py"),
                            "--epochs", str(args.liver_epochs), "--min-steps", str(args.liver_min_steps),
                            "--seed", str(seed),
                            "--run", str(ROOT / "benchmarks" / "work" / name), "--out", str(res_path)], check=True)
        r = json.loads(res_path.read_text())
        rows.append({"seed": seed, "tumor_dice": r["dice"]["tumor"]["mean"], "tumor_dice_ci": r["dice"]["tumor"]["ci"],
                     "sensitivity": r["sensitivity_overall"]["sensitivity"],
                     "sensitivity_ci": r["sensitivity_overall"]["ci"],
                     "lesions_detected": f"{r['sensitivity_overall']['n_detected']}/{r['sensitivity_overall']['n_lesions']}",
                     "fp_per_case": r["false_positives_per_case"]["mean"],
                     "fp_per_case_ci": r["false_positives_per_case"]["ci"],
                     "liver_dice": r["dice"]["liver"]["mean"], "liver_dice_ci": r["dice"]["liver"]["ci"],
                     "sensitivity_by_size": {k: v["sensitivity"] for k, v in r["sensitivity_by_size"].items()},
                     "seconds": r.get("seconds"), "amp": "auto (bf16 on this CPU after the start-up check)",
                     "tumor_threshold": (((r.get("setup", {}).get("run") or {}).get("postprocess") or {}).get(
                         "tumor_threshold", "argmax (before the decision rule)") or "argmax"),
                     "validation_tumor_dice_by_threshold": ((r.get("setup", {}).get("run") or {}).get("postprocess")
                                                            or {}).get("tumor_dice_by_threshold")})
    agree = {m: _overlap([row[f"{m}_ci"] for row in rows]) for m in ("tumor_dice", "sensitivity", "fp_per_case",
                                                                     "liver_dice")} if len(rows) > 1 else {}
    out["liver_tumor"] = {"seeds": rows, "agreement": agree, "epochs": args.liver_epochs,
                          "min_steps": args.liver_min_steps,
                          "decision_rule": "tumour where its probability reaches the threshold chosen on the training "
                                           "CT's synthetic validation (aemia.recipes.liver_tumor.choose_tumor_threshold), "
                                           "then the largest liver component",
                          "setup": "synthetic_tumor_detection.py: trained on the bundled 3 mm CT's liver with "
                                   "synthetic tumours only; scored on the held-out DICOM CT with synthetic "
                                   "validation tumours (4 versions x 2 tumours per size bin)",
                          **provenance()}
    out["liver_tumor"]["figure"] = liver_tumor_figure(rows, ROOT / "benchmarks" / "results"
                                                      / "training_stability_liver_tumor.png")
    _write(args, out)


def part_liver_tumor_product(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """The shipped liver + tumour recipe's seeds (issue 17, ``real_tumor_transfer.py --stage seeds``): three seeds
    holding out the same healthy liver, their synthetic-validation figures with CIs and whether they agree. Read
    from ``real_tumor_transfer.json`` (that benchmark trains and scores them), recorded here as
    ``liver_tumor.product_recipe`` beside the older single-CT recipe above."""
    src = ROOT / "benchmarks" / "results" / "real_tumor_transfer.json"
    if not src.is_file():
        raise SystemExit(f"{src}: missing; run benchmarks/real_tumor_transfer.py first")
    same = json.loads(src.read_text()).get("synthetic_validation_same_liver") or {}
    cases = {c: v for c, v in same.items() if isinstance(v, dict) and "seeds" in v}
    if not cases:
        raise SystemExit(f"{src}: no synthetic_validation_same_liver; run real_tumor_transfer.py --stage seeds first")
    case, v = next(iter(cases.items()))
    keys = ("tumor_dice", "sensitivity", "fp_per_case")
    rows = [{"seed": r["seed"], "run": r["run"], **{k: r[k] for k in keys}, **{f"{k}_ci": r[f"{k}_ci"] for k in keys},
             "held_out_liver_dice": r.get("held_out_liver_dice")} for r in v["seeds"]]
    out.setdefault("liver_tumor", {})["product_recipe"] = {
        "seeds": rows, "held_out_liver": case,
        "agreement": {k: _overlap([r[f"{k}_ci"] for r in rows]) for k in keys},
        "rule": same.get("rule"), "source": f"{src.relative_to(ROOT)}: synthetic_validation_same_liver",
        "source_command": same.get("command"), "source_date": same.get("date"),
        "note": "the recipe aemia ships (benchmarks/real_tumor_transfer.py: three healthy livers, strong 3D "
                "augmentation, 1500 steps at 2 mm), three seeds with the same held-out liver; liver Dice of one "
                "held-out liver has no CI, so its agreement is not tested (the values are listed)"}
    _write(args, out)


def liver_tumor_figure(rows: list[dict[str, Any]], path: Path) -> str:
    """Per seed: lesion sensitivity by size on the held-out CT (left) and the tumour Dice of each threshold on the
    training CT's synthetic validation, where the threshold is chosen (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = list(rows[0]["sensitivity_by_size"])
    w = 0.8 / len(rows)
    for i, row in enumerate(rows):
        a.bar([k + i * w for k in range(len(bins))], [row["sensitivity_by_size"][x] for x in bins], w,
              label=f"seed {row['seed']}: {row['lesions_detected']}, {row['fp_per_case']:g} FP/case")
        table = row.get("validation_tumor_dice_by_threshold") or {}
        if table:
            b.plot(list(table), list(table.values()), marker="o", label=f"seed {row['seed']} (chose {row['tumor_threshold']})")
    a.set_xticks([k + 0.4 - w / 2 for k in range(len(bins))], bins)
    a.set_ylim(0, 1)
    a.set_ylabel("lesion sensitivity")
    a.set_title("held-out CT, synthetic validation tumours", fontsize=10)
    a.legend(fontsize=8)
    b.set_xlabel("tumour probability threshold")
    b.set_ylabel("tumour Dice")
    b.set_title("training CT's synthetic validation (the choice)", fontsize=10)
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return str(path.relative_to(ROOT))


def part_repeat_test_suite(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """``make test`` on fresh clones (``repeat_test_suite.sh``), or the record of an earlier series (``--repeat-log``)."""
    log = args.repeat_log or ROOT / "benchmarks" / "work" / "repeat_test_suite.jsonl"
    if args.repeat_log is None:
        subprocess.run(["bash", str(ROOT / "benchmarks" / "repeat_test_suite.sh"), str(args.repeats), str(log)],
                       check=True)
    runs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    out["repeat_test_suite"] = {"passed": sum(r["rc"] == 0 for r in runs), "of": len(runs), "runs": runs,
                                "command": f"bash benchmarks/repeat_test_suite.sh {len(runs)}",
                                "machine": provenance()["machine"]}
    _write(args, out)


PARTS = {"kvasir": part_kvasir, "pneumoniamnist": part_pneumoniamnist, "busi_active_cli": part_busi_active_cli,
         "amp_variation": part_amp_variation, "liver_tumor": part_liver_tumor,
         "liver_tumor_product": part_liver_tumor_product,
         "repeat_test_suite": part_repeat_test_suite}


def _write(args: argparse.Namespace, out: dict[str, Any]) -> None:
    out.update(provenance())
    write_json_atomic(args.out, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="kvasir", help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--fractions", default="0.1,0.25,1.0")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--model", default="unetpp")
    ap.add_argument("--subset-seed", type=int, default=None, help="kvasir: fix the labelled subset (default: each seed's own)")
    ap.add_argument("--init", default=None,
                    help="kvasir: start from these weights (a run folder or a shipped model, e.g. universal2d-no-kvasir)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--min-steps", type=int, default=3000,
                    help="at least this many optimiser steps per run (the recipe of aemia train; 600 before 2026-12-03)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--amp", default="none")
    ap.add_argument("--liver-epochs", type=int, default=1)
    ap.add_argument("--liver-min-steps", type=int, default=1500,
                    help="liver_tumor: at least this many optimiser steps (800 steps found 0/32 under the argmax)")
    ap.add_argument("--repeats", type=int, default=10, help="repeat_test_suite: make test runs")
    ap.add_argument("--repeat-log", type=Path, default=None, help="repeat_test_suite: summarise this JSON-lines log")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "training_stability")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training_stability.json")
    args = ap.parse_args()
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    out: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    for part in args.parts.split(","):
        PARTS[part](args, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
